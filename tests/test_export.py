"""GGUF export: the file reloads (transformers' GGUF reader) with the same weights, logits and tokenizer.

Weight-level tests use a tiny random Llama with a tiny byte-level BPE tokenizer trained here in
milliseconds: reading a GGUF back parses every vocabulary entry in Python, so SmolLM2's 49k
tokens cost seconds per load. The real SmolLM2 tokenizer is exported once, by the end-to-end
export (module fixture), and its round trip is checked on that file.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import gguf
import pytest
import torch
from conftest import REPO_ROOT, make_tiny_llama

from tunebook.config import LoraSettings, load_config
from tunebook.errors import RunFolderError
from tunebook.export import export_run, load_gguf_model
from tunebook.formatting import build_prompt
from tunebook.gguf_convert import UnsupportedModel, pre_tokenizer_name, rope_permute, write_gguf
from tunebook.lora import apply_lora
from tunebook.models import load_model
from tunebook.ollama import chatml_parts, modelfile_text

TEXTS = ["Ada Lovelace visited Paris in May 1843.", "Grace Hopper spoke at the Navy in 1985, twelve times.",
         '{"person": ["Ada Lovelace"], "organization": [], "location": ["Paris"], "date": ["May 1843"]}']
CONVERSATION = [{"role": "system", "content": "You are precise."},
                {"role": "user", "content": "Extract the entities as JSON.\n\nAda Lovelace visited Paris in May 1843."},
                {"role": "assistant", "content": '{"person": ["Ada Lovelace"]}'},
                {"role": "user", "content": "And Grace Hopper in 1985?"}]


@pytest.fixture(scope="module")
def small_tokenizer(smollm_tokenizer):
    """A 300-token byte-level BPE with ChatML special tokens and SmolLM2's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(TEXTS * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tokenizer.chat_template = smollm_tokenizer.chat_template
    return tokenizer


def tiny_model(tokenizer, seed: int = 0, tie: bool = False):
    model = make_tiny_llama(len(tokenizer), seed=seed, pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if tie:
        model.config.tie_word_embeddings = True
        model.tie_weights()
    return model


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def exports(small_tokenizer, tmp_path_factory):
    """The same tiny model written as f16, bf16 and q8_0, and each file loaded back by transformers."""
    model = tiny_model(small_tokenizer)
    folder = tmp_path_factory.mktemp("gguf")
    files = {q: write_gguf(model, small_tokenizer, folder / f"tiny-{q}.gguf", q, name="tiny") for q in
             ("f16", "bf16", "q8_0")}
    return model, files, {q: load_gguf_model(path)[0] for q, path in files.items()}


@pytest.mark.parametrize("quant,dtype", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_export_is_the_model_rounded(exports, small_tokenizer, quant, dtype):
    model, files, reloaded = exports
    exported = reloaded[quant]
    state = exported.state_dict()
    # Every 2-D weight is exactly the original rounded to the format (names and the q/k permutation
    # round-trip); norms stay f32, bit for bit.
    for name, tensor in model.state_dict().items():
        expected = tensor.to(dtype).float() if tensor.ndim == 2 else tensor
        assert torch.equal(state[name], expected), name
    rounded = tiny_model(small_tokenizer)
    with torch.no_grad():
        for param in rounded.parameters():
            if param.ndim == 2:
                param.copy_(param.to(dtype).float())
    ids = small_tokenizer(TEXTS[0])["input_ids"]
    assert torch.allclose(logits(exported, ids), logits(rounded, ids), atol=1e-5)
    assert (logits(exported, ids) - logits(model, ids)).abs().max() < (2e-3 if quant == "f16" else 2e-2)
    # f16/bf16 store 2 bytes per weight: about half of the fp32 parameters' bytes.
    n_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert 0.45 < files[quant].stat().st_size / n_bytes < 0.6


def test_q8_0_reloads_close_and_smaller(exports, small_tokenizer):
    model, files, reloaded = exports
    reader = gguf.GGUFReader(files["q8_0"])
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert files["q8_0"].stat().st_size < 0.6 * files["f16"].stat().st_size  # 34 bytes per 32 weights
    ids = small_tokenizer(TEXTS[1])["input_ids"]
    q8_diff = (logits(reloaded["q8_0"], ids) - logits(model, ids)).abs().max()
    f16_diff = (logits(reloaded["f16"], ids) - logits(model, ids)).abs().max()
    assert f16_diff < q8_diff < 0.05  # measured: ~3e-4 vs ~1e-2
    assert torch.equal(logits(reloaded["q8_0"], ids).argmax(-1), logits(model, ids).argmax(-1))


def test_file_metadata_follows_the_config(exports, small_tokenizer):
    model, files, _ = exports
    fields = gguf.GGUFReader(files["f16"]).fields
    def value(key):
        return fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.attention.head_count") == 4 and value("llama.attention.head_count_kv") == 2
    assert value("llama.rope.freq_base") == pytest.approx(model.config.rope_parameters["rope_theta"])
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(model.config.rms_norm_eps)
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    assert value("tokenizer.ggml.eos_token_id") == small_tokenizer.eos_token_id
    assert value("tokenizer.ggml.add_bos_token") is False
    assert value("tokenizer.chat_template") == small_tokenizer.chat_template
    assert value("tokenizer.ggml.token_type")[:4] == [3, 3, 3, 1]  # special tokens are CONTROL


def test_tied_embeddings_write_no_output_tensor(small_tokenizer, tmp_path):
    tied, untied = tiny_model(small_tokenizer, tie=True), tiny_model(small_tokenizer)
    names = {}
    for label, model in (("tied", tied), ("untied", untied)):
        path = write_gguf(model, small_tokenizer, tmp_path / f"{label}.gguf", "f16")
        names[label] = {t.name for t in gguf.GGUFReader(path).tensors}
    assert names["untied"] - names["tied"] == {"output.weight"}
    reloaded, _ = load_gguf_model(tmp_path / "tied.gguf")
    assert reloaded.config.tie_word_embeddings
    ids = small_tokenizer(TEXTS[2])["input_ids"]
    assert (logits(reloaded, ids) - logits(tied, ids)).abs().max() < 2e-3


@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
def test_mistral_and_qwen2_round_trip(small_tokenizer, tmp_path, model_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=len(small_tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256, eos_token_id=small_tokenizer.eos_token_id,
                                  tie_word_embeddings=model_type == "qwen2")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    path = write_gguf(model, small_tokenizer, tmp_path / f"{model_type}.gguf", "f16")
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    # Qwen2 has q/k/v biases and runs llama.cpp's NEOX rope (no permutation); Mistral is llama.cpp's Llama graph.
    assert ("blk.0.attn_q.bias" in names) == (model_type == "qwen2")
    assert gguf.GGUFReader(path).fields["general.architecture"].contents() == \
        {"mistral": "llama", "qwen2": "qwen2"}[model_type]
    reloaded, _ = load_gguf_model(path)
    ids = small_tokenizer(TEXTS[0])["input_ids"]
    assert (logits(reloaded, ids) - logits(model, ids)).abs().max() < 2e-3


def test_rope_permute_interleaves_the_halves_of_each_head():
    rows = torch.arange(8.0).reshape(8, 1)  # 2 heads of 4 rows
    assert rope_permute(rows, n_heads=2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    # transformers' GGUF reader applies the inverse (its round trip is tested above on real weights).
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = torch.randn(12, 5)
    back = LlamaTensorProcessor()._reverse_permute_weights(rope_permute(weight, 3).numpy(), 3, 3)
    assert torch.equal(torch.from_numpy(back), weight)


def test_unsupported_architectures_say_what_is_supported(small_tokenizer, tmp_path):
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(small_tokenizer), n_embd=32, n_layer=1, n_head=2))
    bert = BertForMaskedLM(BertConfig(vocab_size=len(small_tokenizer), hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=64))
    for model, model_type in ((gpt2, "gpt2"), (bert, "bert")):
        with pytest.raises(UnsupportedModel, match=rf"\['llama', 'mistral', 'qwen2'\].*'{model_type}'"):
            write_gguf(model, small_tokenizer, tmp_path / f"{model_type}.gguf")
    scaled = tiny_model(small_tokenizer)
    scaled.config.rope_parameters = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
    with pytest.raises(UnsupportedModel, match="RoPE scaling 'llama3'"):
        write_gguf(scaled, small_tokenizer, tmp_path / "scaled.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_pre_tokenizer_name_comes_from_how_text_is_split():
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert pre_tokenizer_name({"pre_tokenizer": byte_level}) == "gpt-2"
    smollm = [{"type": "Digits", "individual_digits": True}, byte_level]
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": smollm}}) == "smollm"
    split = {"type": "Split", "pattern": {"Regex": GGUF_PRE_TOKENIZER_SPLITS["qwen2"]}, "behavior": "Isolated"}
    qwen2 = {"type": "Sequence", "pretokenizers": [split, dict(byte_level, use_regex=False)]}
    assert pre_tokenizer_name({"pre_tokenizer": qwen2}) == "qwen2"
    with pytest.raises(UnsupportedModel, match="Unknown BPE pre-tokenizer"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}})


# --- end to end: a run folder with an adapter -> export -> Modelfile and verification.json ------------


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """A run folder holding an adapter (random non-zero B) on the tiny SmolLM2-tokenizer model, and its config."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(1)
    model = apply_lora(load_model(str(tiny_model_dir)), LoraSettings(r=4, alpha=8, dropout=0.0), verbose=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    model.save_pretrained(folder / "adapter")
    config = load_config(REPO_ROOT / "configs/smollm2-135m-instruct/lora.yaml", [
        f"model.name={tiny_model_dir}", f"train.output_dir={folder}", f"data.path={REPO_ROOT / 'data/extraction'}",
        "eval.max_examples=3", "eval.max_new_tokens=4"])
    return config, export_run(config, "f16")


def test_export_writes_gguf_modelfile_and_verification(run):
    config, summary = run
    folder = Path(config.train.output_dir) / "export" / "f16"
    assert summary["file"] == f"{Path(config.train.output_dir).name}-f16.gguf"  # named after the run
    assert {p.name for p in folder.iterdir()} == {"Modelfile", summary["file"], "predictions.jsonl",
                                                  "verification.json"}
    saved = json.loads((folder / "verification.json").read_text())
    assert saved["rows"] == 3 and saved["weights"]["weights_exact"] is True
    assert saved["logits"]["max_abs_diff"] < 2e-3 and saved["logits"]["positions"] > 100
    assert saved["tokenizer"] == {"rows": 3, "identical_prompt_ids": 3, "chat_template_identical": True}
    assert set(saved["task_metric"]) >= {"adapter", "merged", "exported"} and saved["task_metric"]["rows"] == 3
    assert saved["greedy"]["rows"] == 3
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]) == {"input", "reference", "adapter", "merged", "exported"}
    assert saved["greedy"]["identical_to_merged"] == sum(r["merged"] == r["exported"] for r in rows)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_export_refuses_to_replace_an_earlier_one(run):
    config, summary = run
    gguf_file = Path(config.train.output_dir) / "export" / "f16" / summary["file"]
    before = gguf_file.stat().st_mtime_ns
    with pytest.raises(RunFolderError, match="--overwrite"):
        export_run(config, "f16")
    assert gguf_file.stat().st_mtime_ns == before


def test_qlora_run_is_exported_from_the_dequantized_base(run, tmp_path):
    """A run trained on a 4-bit base (its config.yaml says so) is merged into the dequantized base."""
    pytest.importorskip("bitsandbytes")
    import shutil

    import yaml

    from tunebook.config import config_to_dict
    from tunebook.inference import _merge_full_precision

    config = run[0]
    folder = tmp_path / "qlora-run"
    shutil.copytree(Path(config.train.output_dir) / "adapter", folder / "adapter")
    values = config_to_dict(config)
    values["model"]["quantization"] = "4bit"
    values["train"]["output_dir"] = str(folder)
    (folder / "config.yaml").write_text(yaml.safe_dump(values))
    qlora_config = load_config(folder / "config.yaml")
    summary = export_run(qlora_config, "f16", verify=False)
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(folder / "export" / "f16", gguf_file=summary["file"])
    dequantized = _merge_full_precision(config.model.name, folder / "adapter", "4bit")
    full_precision = _merge_full_precision(config.model.name, folder / "adapter", None)
    state = exported.state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(state[name], dequantized.state_dict()[name].half().float())
    assert not torch.equal(state[name], full_precision.state_dict()[name].half().float())


def test_exported_smollm_tokenizer_round_trips_the_chat_template(run, smollm_tokenizer):
    config, summary = run
    from transformers import AutoTokenizer

    folder = Path(config.train.output_dir) / "export" / "f16"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=summary["file"])
    assert tokenizer.chat_template == smollm_tokenizer.chat_template
    for add_generation_prompt in (True, False):
        text = smollm_tokenizer.apply_chat_template(CONVERSATION, tokenize=False,
                                                    add_generation_prompt=add_generation_prompt)
        assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False,
                                             add_generation_prompt=add_generation_prompt) == text
        expected = smollm_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected
        assert len(expected) > 60 and expected.count(smollm_tokenizer.convert_tokens_to_ids("<|im_start|>")) >= 4
    for attribute in ("eos_token_id", "bos_token_id", "pad_token_id"):
        assert getattr(tokenizer, attribute) == getattr(smollm_tokenizer, attribute)


def render_ollama(template: str, messages: list[dict[str, str]]) -> str:
    """Render the Modelfile's ChatML template the way Go's text/template would (only what it uses)."""
    match = re.fullmatch(r"\{\{- range \.Messages \}\}(.*?)\{\{ end \}\}(.*)", template, flags=re.DOTALL)
    assert match, template
    body, tail = match.groups()
    return "".join(body.replace("{{ .Role }}", m["role"]).replace("{{ .Content }}", m["content"])
                   for m in messages) + tail


def test_modelfile_from_template_stop_and_greedy(run, smollm_tokenizer):
    config, summary = run
    text = (Path(config.train.output_dir) / "export" / "f16" / "Modelfile").read_text()
    assert re.search(rf"^FROM \./{re.escape(summary['file'])}$", text, flags=re.MULTILINE)
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0" in text
    assert "PARAMETER repeat_penalty 1" in text
    assert f'SYSTEM """{config.data.system_prompt}"""' in text
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, flags=re.DOTALL | re.MULTILINE).group(1)
    # Ollama's rendering of a conversation is the chat template's, byte for byte.
    expected = build_prompt(smollm_tokenizer, CONVERSATION)
    assert render_ollama(template, CONVERSATION) == expected


def test_modelfile_takes_the_templates_default_system_prompt(smollm_tokenizer, small_tokenizer):
    config = load_config(REPO_ROOT / "configs/smollm2-135m-instruct/lora.yaml", ["data.system_prompt=null"])
    default = chatml_parts(smollm_tokenizer)["default_system"]
    assert default.startswith("You are a helpful AI assistant named SmolLM")
    assert f'SYSTEM """{default}"""' in modelfile_text("m.gguf", smollm_tokenizer, config, "m")
    # A template that is not ChatML gets no TEMPLATE line (Ollama's own detection is left to act).
    llama3_like = "{% for m in messages %}<|start|>{{ m['role'] }}: {{ m['content'] }}<|end|>{% endfor %}"
    tokenizer = copy.deepcopy(small_tokenizer)  # the fixture is shared: never mutate it
    tokenizer.chat_template = llama3_like
    assert chatml_parts(tokenizer) is None
    assert "\nTEMPLATE" not in modelfile_text("m.gguf", tokenizer, config, "m")


def test_llama_cpp_runs_the_export_like_transformers(exports, small_tokenizer):
    """Only where llama-cpp-python is installed (`make llama-cpp`); see docs/export.md."""
    pytest.importorskip("llama_cpp")
    from tunebook.llamacpp import llama_logits, load_llama

    _, files, reloaded = exports
    llm = load_llama(files["f16"], n_ctx=128, logits_all=True)
    ids = small_tokenizer(TEXTS[0])["input_ids"]
    assert llm.tokenize(TEXTS[0].encode(), add_bos=False, special=True) == ids
    assert (llama_logits(llm, ids) - logits(reloaded["f16"], ids)).abs().max() < 1e-2
