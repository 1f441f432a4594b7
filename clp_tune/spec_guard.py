"""What a search-space file is checked for before and after it is parsed, beyond :func:`clp_tune.spec.load_spec`.

Before: the size of the file and of what its YAML expands to. A spec is a few hundred bytes, but parsing is only
cheap for small input: a 10 MB file takes PyYAML seconds, and a few lines of nested anchors (the "billion laughs")
expand to 10^9 nodes once anything walks them (pydantic, an error message's ``repr``); deep nesting exhausts the
recursion of the pure-Python parser. All are refused in milliseconds, from the file's size and from a walk of its
composed YAML graph (libyaml's, which shares aliases) that stops at the first node past a limit.

After: the trajectory scheduler's ``bank:`` file, read and checked as the scheduler would read it, so a bad bank
is bad input at validation (exit 2) instead of a failed search once Ray has started.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from clp_tune.inputs import one_line
from clp_tune.spec import Spec, SpecError, load_spec

#: Largest spec file read (the shipped ones are under 2 kB).
MAX_SPEC_BYTES = 64 * 1024
#: Most YAML nodes a spec may expand to, aliases expanded (the shipped ones have under 100).
MAX_YAML_NODES = 2_000
#: Deepest nesting of a spec's YAML (the shipped ones nest 4 deep); deeper input would exhaust the recursion of
#: the pure-Python parser and of pydantic.
MAX_YAML_DEPTH = 32


def _size_problem(root: yaml.Node) -> str | None:
    """What makes the composed YAML too big, or None. The graph is walked as if every alias were expanded, without
    recursion, and the walk stops at the first node past a limit: at most :data:`MAX_YAML_NODES` steps, whatever
    the file (a cycle of aliases never ends, so it too is refused)."""
    stack, count = [(root, 1)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            return (f"YAML of more than {MAX_YAML_NODES} nodes once its aliases are expanded; expected a search-space "
                    f"file of at most {MAX_YAML_NODES}")  # fmt: skip
        if depth > MAX_YAML_DEPTH:
            return f"YAML nested more than {MAX_YAML_DEPTH} deep; expected a mapping of keys (name, dataset, ...)"
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend((part, depth + 1) for pair in node.value for part in pair)
    return None


def check_spec_size(path: str | Path) -> None:
    """Refuse a file too big to be a spec, YAML nested too deeply or whose aliases expand too far, and YAML that does
    not parse; the other problems (no file, not UTF-8, not a spec) are left to :func:`~clp_tune.spec.load_spec`."""
    path = Path(path)
    if not path.is_file():
        return
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {size} bytes; expected a search-space file of at most {MAX_SPEC_BYTES} bytes")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        return
    try:  # libyaml when present: it refuses deep nesting at once, where PyYAML's recursion takes seconds to fail
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML ({one_line(error)})") from None
    except RecursionError:  # PyYAML's own composer, where libyaml is missing
        raise SpecError(f"{path}: YAML nested more than {MAX_YAML_DEPTH} deep; expected a mapping of keys") from None
    problem = _size_problem(node) if node is not None else None
    if problem:
        raise SpecError(f"{path}: {problem}")


def check_bank(spec: Spec, source: str) -> None:
    """Read ``scheduler.bank`` of a trajectory-scheduled spec as the scheduler will, and check it
    (:func:`clp_tune.stopping.bank_library.load_bank`); a bad bank is a SpecError naming the file and column."""
    if spec.scheduler.type != "trajectory" or not spec.scheduler.bank:
        return
    from clp_tune.stopping.bank_library import load_bank

    try:
        load_bank(spec.scheduler.bank)
    except (FileNotFoundError, ValueError) as error:
        raise SpecError(f"{source}: scheduler.bank: {one_line(error)}") from None


def load_spec_file(path: str | Path) -> Spec:
    """A search-space file checked completely before anything starts: its size, its YAML, the spec, its bank."""
    check_spec_size(path)
    spec = load_spec(path)
    check_bank(spec, str(path))
    return spec
