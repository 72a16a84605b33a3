"""A copy of this tree with the metrics counters taken out, to measure what counting costs.

    python -m bench.uncounted /tmp/asgiws-uncounted
    python -m bench.uncounted --control /tmp/asgiws-counted     # the same rewrite, nothing taken out
    python -m bench.echo_instructions --uncounted-tree /tmp/asgiws-uncounted --control-tree /tmp/asgiws-counted
    python -m bench.run --only echo64 --servers asgiws,asgiws-scraped,asgiws-base \\
        --base-tree /tmp/asgiws-uncounted --runs 7

asgiws always counts (the counters are plain integers on the hot paths, read only when scraped), so
"without metrics" can only be a build without them. This writes one: the asgiws package and bench/
copied, the C helper's built module included, and in every module each statement that only counts
replaced by `pass`:

- `+=` or `=` on a tally's `messages_received`, `messages_sent`, `bytes_received`, `bytes_sent`
  (what the scrape sums for asgiws_websocket_messages_total and _bytes_total, and the close's log
  line shows);
- `+=` on anything under `METRICS`, and calls of `METRICS...` (request counts and durations, opens,
  closes, rejections, ping round trips, broadcast counts);

and a `for` loop left with nothing but `pass` removed with it. The C helper counts the common frames
itself when it is handed a tally: in the copy every `....tally` passed to a call as a positional
argument becomes `None`, which the helper takes as "count nothing". The copy is rewritten with
`ast.unparse`, so it has no comments; it is not for reading. It prints what it took out, per file,
so a new counter that is not matched shows up as a missing line.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SESSION_COUNTERS = {"messages_received", "messages_sent", "bytes_received", "bytes_sent"}


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def counts_only(statement: ast.stmt) -> bool:
    """True for a statement whose only effect is a metrics counter."""
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        target = statement.targets[0]  # `tally.bytes_received = ...`, not a tally's own `self.x = 0`
        return (isinstance(target, ast.Attribute) and target.attr in SESSION_COUNTERS
                and not (isinstance(target.value, ast.Name) and target.value.id == "self"))
    if isinstance(statement, ast.AugAssign):
        target = statement.target
        if isinstance(target, ast.Attribute) and target.attr in SESSION_COUNTERS:
            return True
        return _root_name(target) == "METRICS"
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        return _root_name(statement.value.func) == "METRICS"
    return False


class Uncount(ast.NodeTransformer):
    def __init__(self) -> None:
        self.removed: list[str] = []

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        for i, argument in enumerate(node.args):
            if isinstance(argument, ast.Attribute) and argument.attr == "tally":
                self.removed.append(f"{node.lineno}: {ast.unparse(argument)} passed as None")
                node.args[i] = ast.copy_location(ast.Constant(None), argument)
        return node

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if not isinstance(statements, list) or not statements or not isinstance(statements[0], ast.stmt):
                continue
            kept: list[ast.stmt] = []
            for statement in statements:
                if counts_only(statement) or _empty_loop(statement):
                    self.removed.append(f"{statement.lineno}: {ast.unparse(statement).splitlines()[0]}")
                    continue
                kept.append(statement)
            setattr(node, field, kept or [ast.Pass()])
        return node


def _empty_loop(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.For) and not statement.orelse
            and all(isinstance(s, ast.Pass) for s in statement.body))


def write_uncounted_tree(dest: Path, *, control: bool = False) -> dict[str, list[str]]:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("asgiws", "bench"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    removed: dict[str, list[str]] = {}
    for path in sorted((dest / "asgiws").rglob("*.py")):
        source = path.read_text()
        uncount = Uncount()
        tree = uncount.visit(ast.parse(source))
        if uncount.removed:
            # The control tree: the same files through the same rewrite, with nothing taken out.
            path.write_text(ast.unparse(ast.parse(source) if control else ast.fix_missing_locations(tree)) + "\n")
            removed[str(path.relative_to(dest))] = uncount.removed
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="the directory to write (replaced if it exists)")
    parser.add_argument("--control", action="store_true",
                        help="take nothing out: the same files rewritten by ast.unparse, the baseline the "
                             "uncounted tree is measured against (the rewrite alone moves the figure)")
    a = parser.parse_args()
    dest = a.dest.resolve()
    if dest == ROOT or ROOT in dest.parents:
        sys.exit(f"{dest} is inside this checkout: give a directory outside it")
    removed = write_uncounted_tree(dest, control=a.control)
    for path, lines in removed.items():
        print(f"{path}: {len(lines)} counting statement(s) " + ("kept (control)" if a.control else "taken out"))
        for line in lines:
            print(f"    {line}")
    print(f"wrote {dest}; run it as asgiws-base: python -m bench.run --base-tree {dest} ...")


if __name__ == "__main__":
    main()
