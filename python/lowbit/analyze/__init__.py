"""``lowbit analyze``: a real model at every precision, and what each gains and loses.

- ``data``: the sentences it embeds (prose of Python's pydoc_data.topics);
- ``metrics``: how embeddings are scored against the fp32 model's;
- ``variants``: the table's rows (fp32, bf16, fp8, int8, int4) and how each model is built;
- ``core``: a case (model, data, metric) and the loop that builds, runs and scores each row;
- ``minilm``: the sentence-embedding case (all-MiniLM-L6-v2, or ``--model DIR``);
- ``digits``: the classification case (scikit-learn's digits, a small MLP);
- ``gpu``: the GPU timing section (BERT-large-shaped encoder, Llama-shaped layers, per
  precision, with the board's power: ``power``);
- ``report``: the table, analyze.json, analyze.md and analyze.png;
- ``run``: the command line, ``main(argv) -> exit code``.

Importing this package needs neither transformers, scikit-learn nor matplotlib (the
``analyze`` extra): the cases import them when they run.
"""


def main(argv=None) -> int:
    from .run import main as _main

    return _main(argv)
