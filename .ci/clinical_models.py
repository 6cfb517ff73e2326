"""Random-weight clinical models in the file layouts f1chexbert, radgraph and RaTEScore load.

Run with the clinical environment's interpreter: ``python .ci/clinical_models.py ROOT``. ROOT
becomes a ``MEDBENCH_MODELS`` root (see ``medbench/metrics/clinical.py``):

- ``hf/models--bert-base-uncased/snapshots/<rev>/``: a small BERT (config, vocab.txt,
  tokenizer_config.json, weights) in the Hugging Face cache layout, standing in for
  bert-base-uncased (f1chexbert reads its config and tokenizer; RadGraph's embedder loads it);
- ``chexbert/chexbert.pth``: ``{"model_state_dict": {"module.…": tensor}}`` for f1chexbert's
  ``bert_labeler`` on that config, as the published file is laid out;
- ``radgraph/radgraph/``: ``config.json`` (a DyGIE model whose token indexer and embedder name
  ``bert-base-uncased``), ``vocabulary/`` (AllenNLP files) and ``weights.th`` (its state dict);
- ``RaTE-NER-Deberta/``: a token-classification model with RaTEScore's 11 BIO labels and its
  tokenizer; ``BioLORD-2023-C/``: an encoder with its tokenizer.

The weights are random: every call, file layout and parse is the packages' own, the values mean
nothing. Small vocabularies are built here, offline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

_TEXT = ("no acute cardiopulmonary process the heart size is normal lungs are clear there is a small left right "
         "pleural effusion pneumothorax consolidation opacity lung base mild cardiomegaly edema atelectasis "
         "stable unchanged without with of and in at lobe upper lower focal airspace disease osseous structures "
         "intact . , : ; - ( ) / ? !")
WORDS = _TEXT.split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
RATE_LABELS = ["O"] + [f"{p}-{t}" for t in ("ABNORMALITY", "NON-ABNORMALITY", "DISEASE", "NON-DISEASE", "ANATOMY")
                       for p in ("B", "I")]
REVISION = "0" * 40


def vocab() -> list[str]:
    return list(dict.fromkeys(SPECIAL + WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789")))


def bert_config(**extra):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=512, **extra)


def write_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab()) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "do_lower_case": True, "model_max_length": 512}))


def hf_cache_bert(root: Path) -> Path:
    """bert-base-uncased in the hub cache layout (refs/main → snapshots/<rev>)."""
    from transformers import BertModel

    repo = root / "hf" / "models--bert-base-uncased"
    snap = repo / "snapshots" / REVISION
    torch.manual_seed(0)
    BertModel(bert_config()).save_pretrained(snap)
    write_tokenizer(snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snap


def chexbert(root: Path) -> None:
    """f1chexbert's own ``bert_labeler`` on the cached bert-base-uncased config, saved as chexbert.pth is."""
    from f1chexbert.f1chexbert import bert_labeler

    torch.manual_seed(1)
    model = bert_labeler(inference=True)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    (root / "chexbert").mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": state, "epoch": 0}, root / "chexbert" / "chexbert.pth")


def radgraph(root: Path) -> None:
    from radgraph.allennlp.common.params import Params
    from radgraph.allennlp.data.vocabulary import Vocabulary
    from radgraph.allennlp.modules import text_field_embedders, token_embedders
    from radgraph.dygie.models import dygie

    folder = root / "radgraph" / "radgraph"
    (folder / "vocabulary").mkdir(parents=True, exist_ok=True)
    (folder / "vocabulary" / "non_padded_namespaces.txt").write_text("*tags\n*labels\n")
    ner = ["", "ANAT-DP", "OBS-DP", "OBS-U", "OBS-DA"]
    rel = ["", "modify", "located_at", "suggestive_of"]
    (folder / "vocabulary" / "radgraph__ner_labels.txt").write_text("\n".join(ner) + "\n")
    (folder / "vocabulary" / "radgraph__relation_labels.txt").write_text("\n".join(rel) + "\n")
    bert = {"type": "pretrained_transformer_mismatched", "model_name": "bert-base-uncased", "max_length": 512}
    config = {
        "dataset_reader": {"type": "dygie", "token_indexers": {"bert": bert}, "max_span_width": 8},
        "model": {
            "type": "dygie", "embedder": {"token_embedders": {"bert": bert}}, "feature_size": 20,
            "max_span_width": 8, "target_task": "relation",
            "feedforward_params": {"num_layers": 2, "hidden_dims": 150, "dropout": 0.4},
            "loss_weights": {"ner": 1.0, "relation": 1.0, "coref": 0.0, "events": 0.0},
            "initializer": {}, "module_initializer": {},
            "modules": {"ner": {}, "relation": {"spans_per_word": 0.5},
                        "coref": {"spans_per_word": 0.3, "max_antecedents": 100, "coref_prop": 0},
                        "events": {"trigger_spans_per_word": 0.3, "argument_spans_per_word": 0.8,
                                   "loss_weights": {"trigger": 1.0, "arguments": 0.5}}},
        },
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    vocabulary = Vocabulary.from_files(folder / "vocabulary", None, None)
    embedder = text_field_embedders.BasicTextFieldEmbedder(
        {"bert": token_embedders.PretrainedTransformerMismatchedEmbedder(model_name="bert-base-uncased", max_length=512)})
    model_args = {k: v for k, v in config["model"].items()
                  if k not in ("type", "embedder", "initializer", "module_initializer")}
    torch.manual_seed(2)
    model = dygie.DyGIE(vocab=vocabulary, embedder=embedder, **{**model_args, "modules": Params(model_args["modules"])})
    torch.save(model.state_dict(), folder / "weights.th")


def ratescore(root: Path) -> None:
    from transformers import BertForTokenClassification, BertModel

    torch.manual_seed(3)
    ner = root / "RaTE-NER-Deberta"
    BertForTokenClassification(bert_config(num_labels=len(RATE_LABELS), id2label=dict(enumerate(RATE_LABELS)),
                                           label2id={k: i for i, k in enumerate(RATE_LABELS)})).save_pretrained(ner)
    write_tokenizer(ner)
    biolord = root / "BioLORD-2023-C"
    BertModel(bert_config()).save_pretrained(biolord)
    write_tokenizer(biolord)


def main(argv: list[str]) -> int:
    import os

    if len(argv) != 1:
        print("usage: python .ci/clinical_models.py ROOT", file=sys.stderr)
        return 2
    root = Path(argv[0]).resolve()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_CACHE"] = str(root / "hf")
    hf_cache_bert(root)
    chexbert(root)
    radgraph(root)
    ratescore(root)
    print(f"random-weight clinical models written under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
