"""An Ollama ``Modelfile`` for an exported GGUF: the file, the prompt format, stop tokens, greedy decoding.

Ollama does not run the Jinja chat template stored in the GGUF; it formats prompts with a Go
template of its own (``TEMPLATE``). For ChatML-style templates (SmolLM2, Qwen2:
``<|im_start|>role\\ncontent<|im_end|>\\n`` per turn) the translation is mechanical, and
:func:`chatml_parts` checks it is exact by rendering the tokenizer's own template on a probe
conversation. Other templates are left out of the Modelfile, with a note: Ollama then picks a
template for known chat formats from the GGUF's metadata (not checked here).

The parameters reproduce tunebook's evaluation: temperature 0 (greedy), and ``repeat_penalty 1``,
because Ollama's default of 1.1 lowers the score of tokens already in the text, and a JSON answer
repeats quotes, brackets and keys by design.

No Ollama binary runs on the machines this repository is tested on; the Modelfile is checked by
rendering its template in Python (tests/test_export.py), not by Ollama.
"""

from __future__ import annotations

import re
from pathlib import Path

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from .config import RunConfig
from .log import get_logger

logger = get_logger()

CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
# The Go template that renders a conversation exactly as a ChatML Jinja template does with
# add_generation_prompt=True. Ollama puts the Modelfile's SYSTEM into .Messages as the first
# message when a request has no system message of its own.
OLLAMA_CHATML_TEMPLATE = (
    "{{- range .Messages }}" + CHATML_START + "{{ .Role }}\n{{ .Content }}" + CHATML_END + "\n{{ end }}"
    + CHATML_START + "assistant\n"
)


def _chatml(messages: list[dict[str, str]]) -> str:
    return "".join(f"{CHATML_START}{m['role']}\n{m['content']}{CHATML_END}\n" for m in messages)


def chatml_parts(tokenizer: PreTrainedTokenizerBase) -> dict | None:
    """If the tokenizer's chat template is ChatML, return ``{"default_system": str | None}``, else None.

    The template is rendered on probe conversations and compared with plain ChatML; a template
    that inserts a default system message when none is given (SmolLM2's) has it returned, so the
    Modelfile can carry the same default.
    """
    if not tokenizer.chat_template:
        return None
    probe = [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1"},
             {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    try:
        rendered = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        without_system = tokenizer.apply_chat_template(probe[1:2], tokenize=False, add_generation_prompt=True)
    except (TemplateError, ValueError, KeyError, TypeError):  # a template rejecting these roles is not ChatML
        return None
    if rendered != _chatml(probe) + f"{CHATML_START}assistant\n":
        return None
    tail = _chatml(probe[1:2]) + f"{CHATML_START}assistant\n"
    if without_system == tail:
        return {"default_system": None}
    match = re.fullmatch(re.escape(CHATML_START) + r"system\n(.*?)" + re.escape(CHATML_END) + r"\n", without_system[
        :len(without_system) - len(tail)], flags=re.DOTALL) if without_system.endswith(tail) else None
    return {"default_system": match.group(1)} if match else None


def ollama_model_name(text: str) -> str:
    """A name `ollama create` accepts: lowercase letters, digits, '.', '_' and '-'."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "tunebook-model"


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ValueError(f'Cannot write {text[:60]!r} into a Modelfile: it contains """.')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, tokenizer: PreTrainedTokenizerBase, config: RunConfig,
                   model_name: str, max_new_tokens: int | None = None) -> str:
    """The Modelfile: FROM the GGUF beside it, TEMPLATE (ChatML), SYSTEM, stop tokens, greedy PARAMETERs."""
    chatml = chatml_parts(tokenizer)
    system = config.data.system_prompt or (chatml or {}).get("default_system")
    instruction = config.data.instruction
    lines = [
        f"# Ollama Modelfile for {model_name}, written by `python -m tunebook export` (docs/export.md).",
        f"#   ollama create {model_name} -f Modelfile",
        f"#   ollama run {model_name}",
    ]
    if instruction:
        lines.append(f"# Tuned on user messages of the form: {instruction!r} + a blank line + the input text.")
    lines += ["", f"FROM ./{gguf_name}", ""]
    if chatml is not None:
        lines += [f"TEMPLATE {_quoted(OLLAMA_CHATML_TEMPLATE)}", ""]
    else:
        lines += ["# No TEMPLATE: the chat template is not ChatML, so it is not translated here. Ollama picks",
                  "# a template from the GGUF's tokenizer.chat_template for known formats; check it with",
                  "# `ollama show --template` before relying on it.", ""]
        logger.warning("chat template is not ChatML: the Modelfile has no TEMPLATE (see the note inside it)")
    if system:
        lines += [f"SYSTEM {_quoted(system)}", ""]
    stops = [CHATML_END, CHATML_START] if chatml is not None else []
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines += ["# Greedy decoding, as tunebook evaluates (Ollama's default repeat_penalty 1.1 would",
              "# penalise the quotes and brackets a JSON answer repeats).",
              "PARAMETER temperature 0", "PARAMETER repeat_penalty 1"]
    if max_new_tokens:
        lines.append(f"PARAMETER num_predict {max_new_tokens}")
    return "\n".join(lines) + "\n"


def write_modelfile(folder: str | Path, gguf_name: str, tokenizer: PreTrainedTokenizerBase, config: RunConfig,
                    model_name: str) -> Path:
    """Write ``folder/Modelfile`` next to the GGUF (its FROM path is relative to the Modelfile)."""
    path = Path(folder) / "Modelfile"
    path.write_text(modelfile_text(gguf_name, tokenizer, config, model_name, config.eval.max_new_tokens))
    return path
