"""LOWBIT_TEST_SHARD (tests/conftest.py): the shards of a collection partition it."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = os.path.join(HERE, "test_fp8_codec.py")


def _collected(shard=None):
    env = dict(os.environ)
    env.pop("LOWBIT_TEST_SHARD", None)
    if shard is not None:
        env["LOWBIT_TEST_SHARD"] = shard
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", TARGET], env=env, capture_output=True,
                          text=True, cwd=HERE, timeout=300)
    return proc.returncode, [line for line in proc.stdout.splitlines() if "::" in line]


def test_shards_partition_the_collection():
    rc, full = _collected()
    assert rc == 0 and len(full) > 3
    parts = [_collected(f"{i}/3") for i in range(3)]
    assert all(rc == 0 for rc, _ in parts)
    ids = [t for _, part in parts for t in part]
    assert sorted(ids) == sorted(full)  # disjoint and complete
    assert all(part for _, part in parts)


def test_a_bad_shard_is_an_error():
    for bad in ("3/3", "x"):
        rc, _ = _collected(bad)
        assert rc != 0, bad
