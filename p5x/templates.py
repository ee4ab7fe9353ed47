"""Prompt templates: loading and checking templates/<family>.json (the templates themselves are data).

A family file is `{"family", "fields": [...], "templates": [{"id", "kind", "input", "target",
"unseen"}]}`. `{name}` placeholders must be declared in `fields`; ids are unique across all files;
the last template of each family, and only it, is `"unseen": true` (never trained on; it measures
generalisation to a new wording). Placeholders that stand for ids ({user}, {item}, {history},
{candidates}) must be surrounded by whitespace or the ends of the text: whole-word ids are computed
from whitespace-separated words, so an id glued to punctuation ("{item}?") would change its words.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TemplateError
from .paths import TEMPLATES_DIR

ID_FIELDS = ("user", "item", "history", "candidates")


@dataclass(frozen=True)
class Template:
    id: str
    family: str
    kind: str
    input: str
    target: str
    unseen: bool = False

    def render(self, fields: dict) -> tuple[str, str]:
        """(input, target) with every placeholder filled from `fields`."""
        return self.input.format_map(fields), self.target.format_map(fields)


@dataclass
class Family:
    name: str
    fields: tuple[str, ...]
    templates: list[Template]
    path: Path | None = None
    by_id: dict[str, Template] = field(init=False, repr=False)

    def __post_init__(self):
        self.by_id = {t.id: t for t in self.templates}

    def seen(self) -> list[Template]:
        return [t for t in self.templates if not t.unseen]

    def unseen(self) -> list[Template]:
        return [t for t in self.templates if t.unseen]

    def kinds(self) -> list[str]:
        return sorted({t.kind for t in self.templates})


def placeholders(text: str) -> list[str]:
    """The `{name}` placeholders of a template text, in order."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as e:
        raise TemplateError(f"unbalanced braces ({e})") from None


def _check_spacing(text: str, name: str, where: str) -> None:
    token = "{" + name + "}"
    start = text.find(token)
    while start >= 0:
        end = start + len(token)
        if (start > 0 and not text[start - 1].isspace()) or (end < len(text) and not text[end].isspace()):
            raise TemplateError(f"{where}: placeholder {token} must be surrounded by spaces "
                                "(ids are whole words)")
        start = text.find(token, end)


def _parse_template(raw, path: Path, family: str, fields: set[str]) -> Template:
    if not isinstance(raw, dict):
        raise TemplateError(f"{path}: each template must be a JSON object")
    tid = raw.get("id")
    if not isinstance(tid, str) or not tid:
        raise TemplateError(f"{path}: a template has no 'id'")
    for key in ("kind", "input", "target"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise TemplateError(f"{path}: template {tid}: field '{key}' missing or empty")
    for key in ("input", "target"):
        try:
            names = placeholders(raw[key])
        except TemplateError as e:
            raise TemplateError(f"{path}: template {tid}: field '{key}': {e}") from None
        for name in names:
            if name not in fields:
                raise TemplateError(f"{path}: template {tid}: placeholder {{{name}}} is not declared "
                                    f"in the family's fields {sorted(fields)}")
            if name in ID_FIELDS:
                _check_spacing(raw[key], name, f"{path}: template {tid}: field '{key}'")
    return Template(tid, family, raw["kind"], raw["input"], raw["target"], bool(raw.get("unseen")))


def load_family(path: str | Path) -> Family:
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TemplateError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(d, dict) or not isinstance(d.get("family"), str):
        raise TemplateError(f"{path}: field 'family' missing")
    fields = d.get("fields")
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise TemplateError(f"{path}: field 'fields' must be a list of placeholder names")
    raws = d.get("templates")
    if not isinstance(raws, list) or not raws:
        raise TemplateError(f"{path}: field 'templates' must be a non-empty list")
    templates = [_parse_template(r, path, d["family"], set(fields)) for r in raws]
    ids = [t.id for t in templates]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise TemplateError(f"{path}: duplicate template id {sorted(dup)[0]}")
    flags = [t.unseen for t in templates]
    if not flags[-1] or any(flags[:-1]):
        raise TemplateError(f"{path}: exactly the last template must be \"unseen\": true")
    return Family(d["family"], tuple(fields), templates, path)


def load_templates(dir: str | Path | None = None) -> dict[str, Family]:
    """Every templates/<family>.json (default: the repository's templates/), checked."""
    root = Path(dir) if dir is not None else TEMPLATES_DIR
    files = sorted(root.glob("*.json"))
    if not files:
        raise TemplateError(f"{root}: no template files (*.json)")
    out: dict[str, Family] = {}
    seen_ids: dict[str, Path] = {}
    for path in files:
        fam = load_family(path)
        if fam.name in out:
            raise TemplateError(f"{path}: family {fam.name!r} already defined in {out[fam.name].path}")
        for t in fam.templates:
            if t.id in seen_ids:
                raise TemplateError(f"{path}: template id {t.id} also used in {seen_ids[t.id]}")
            seen_ids[t.id] = path
        out[fam.name] = fam
    return out
