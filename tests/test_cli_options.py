"""One CLI vocabulary (``caffe_compat.cli_options``): the whole argparse tree of ``caffekt`` follows it,
the old spellings still work and say so, and ``caffe_compat`` reaches the packages above it only
through entry points."""
from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys

import pytest

from caffe_compat import cli
from caffe_compat.cli_options import input_shape, parse_pairs
from caffe_compat.errors import UnsupportedParameter
from conftest import REPO

# Commands that draw progress bars / print a table (the spelling rule alone cannot see this).
PROGRESS = {"train", "demo", "kt features", "kt hog", "kt train-cc", "kt probe", "kt run",
            "kt jigsaw prep", "kt jigsaw train", "kt jigsaw eval",
            "detect proposals", "detect train", "detect test", "detect eval"}
TABLES = {"inspect", "parity", "kt cluster", "kt probe", "kt run", "kt jigsaw perms", "kt jigsaw eval", "detect eval"}
# The only spellings outside the vocabulary: hidden, noted on stderr when used.
ALIASES = {"--out", "--no-progress", "--prototxt-out", "--deploy-out", "--png"}


def walk(parser: argparse.ArgumentParser, path=()):
    """(command path, parser) for the top parser, every subcommand and every sub-subcommand."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, path + (name,))


@pytest.fixture(scope="module")
def tree():
    return dict(walk(cli.build_parser()))


def test_the_tree_has_every_level(tree):
    assert {"", "inspect", "kt", "kt jigsaw", "kt jigsaw train", "export onnx", "jigsaw eval"} <= set(tree)
    assert len(tree) >= 25


def test_every_parser_has_an_example(tree):
    for path, p in tree.items():
        assert (p.epilog or "").startswith("example:\n  caffekt "), path
        assert p.format_help().rstrip().endswith(p.epilog.splitlines()[-1].strip()), path


def test_every_option_is_in_the_vocabulary(tree):
    for path, p in tree.items():
        for a in p._actions:
            visible = a.help is not argparse.SUPPRESS
            if a.dest == "output":
                assert not visible or a.option_strings == ["-o", "--output"], (path, a.option_strings)
            if a.dest.endswith("_output") and visible:
                assert a.option_strings == ["--" + a.dest.replace("_", "-")], (path, a.option_strings)
            for s in a.option_strings:
                bad = s in ALIASES or s.endswith("-out") or s in ("--progress", "--no-json", "--silent")
                assert not bad or not visible, (path, s)
                if s in ALIASES:
                    assert not visible, (path, s)
            if a.dest == "quiet" and visible:
                assert a.option_strings == ["--quiet"], path
        if any(isinstance(a, argparse._SubParsersAction) for a in p._actions):
            continue
        names = {s for a in p._actions for s in a.option_strings}
        top = path.split()[0] if path else ""
        if top != "jigsaw":   # the alias tree is the kt jigsaw tree
            assert ("--quiet" in names) == (path in PROGRESS), path
            assert ("--json" in names) == (path in TABLES), path
    assert PROGRESS | TABLES <= set(tree)


def test_old_spellings_still_work_and_say_so(capsys):
    parser = cli.build_parser()
    a = parser.parse_args(["train", "s.prototxt", "--out", "snaps", "--no-progress"])
    assert (a.output, a.quiet) == ("snaps", True)
    err = capsys.readouterr().err.splitlines()
    assert err == ["caffekt train: note: --out is deprecated; use -o/--output",
                   "caffekt train: note: --no-progress is deprecated; use --quiet"]
    a = parser.parse_args(["upgrade", "old.prototxt", "new.prototxt"])
    assert a.output == "new.prototxt"
    assert capsys.readouterr().err.strip() == ("caffekt upgrade: note: a positional OUT is deprecated; "
                                               "use -o/--output")
    a = parser.parse_args(["convert", "a.caffemodel", "b.pt", "--prototxt-out", "f.prototxt"])
    assert (a.output, a.prototxt_output) == ("b.pt", "f.prototxt")
    a = parser.parse_args(["export", "frcnn", "--from", "s", "--target", "caffenet", "-o", "x",
                           "--deploy-out", "d.prototxt"])
    assert a.deploy_output == "d.prototxt"
    assert "use --deploy-output" in capsys.readouterr().err
    # new spellings: silent
    a = parser.parse_args(["kt", "hog", "--images", "i", "-o", "h.npy", "--quiet"])
    assert (a.output, a.quiet) == ("h.npy", True) and capsys.readouterr().err == ""


def test_an_output_is_still_required_and_one_spelling_only(capsys):
    parser = cli.build_parser()
    with pytest.raises(SystemExit) as ei:
        parser.parse_args(["upgrade", "old.prototxt"])
    assert ei.value.code == 2
    assert "caffekt upgrade: error: one of the arguments -o/--output is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["kt", "hog", "--images", "i", "-o", "a.npy", "--out", "b.npy"])
    assert "not allowed with argument -o/--output" in capsys.readouterr().err


def test_jigsaw_alias_runs_kt_jigsaw_and_says_so(tmp_path, capsys):
    out = tmp_path / "p.bin"
    assert cli.main(["jigsaw", "perms", "--n", "5", "-o", str(out)]) == 0
    io = capsys.readouterr()
    assert "5 permutations of 9 tiles" in io.out
    assert io.err.strip() == "caffekt jigsaw: note: this is now 'caffekt kt jigsaw'; the old spelling still works"
    assert cli.main(["kt", "jigsaw", "perms", str(out), "--json"]) == 0
    io = capsys.readouterr()
    assert io.err == "" and '"permutations": 5' in io.out
    listed = [l.split()[0] for l in cli.build_parser().format_help().splitlines() if l.startswith("    ")]
    assert "kt" in listed and "jigsaw" not in listed   # the alias is hidden from the listing


def test_bad_arguments_take_the_one_error_path(tmp_path, capsys):
    assert cli.main(["kt", "jigsaw", "perms", "--n", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # one line from main (which names the command), none printed by the command itself
    assert len(err) == 1 and err[0].startswith("caffekt kt") and err[0].endswith(": error: --n needs -o FILE")
    assert cli.main(["kt", "run", "--list", "--quiet"]) == 0
    assert cli.main(["kt", "run", "hog_cc_small", "--json"]) == 2
    assert "--json goes with --list or --plan" in capsys.readouterr().err


def test_value_parsers():
    assert input_shape("data=1,3,8,8") == ("data", (1, 3, 8, 8))
    assert input_shape("1x3x8x8") == ("", (1, 3, 8, 8))
    for bad in ("data=1,a", "data=1,0,3"):
        with pytest.raises(argparse.ArgumentTypeError):
            input_shape(bad)
    assert parse_pairs(["a=b", "c=d"], "--map") == {"a": "b", "c": "d"}
    with pytest.raises(UnsupportedParameter, match=r"--var 'x': expected NAME=VALUE"):
        parse_pairs(["x"], "--var", "NAME=VALUE")


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            yield str(node.args[0].value)


def test_caffe_compat_reaches_kt_and_converters_only_through_entry_points():
    root = os.path.join(REPO, "caffe_compat")
    bad = [(os.path.relpath(os.path.join(d, f), REPO), m)
           for d, _, files in os.walk(root) for f in files if f.endswith(".py")
           for m in _imports(os.path.join(d, f)) if m == "caffekt" or m.startswith("caffekt.")]
    assert bad == []
    from caffe_compat.plugins import registered
    cmds = registered("caffekt.commands")
    assert {n: ep.value.split(".")[1] for n, ep in cmds.items() if ep.value.startswith("caffekt.")} == {
        "kt": "kt", "jigsaw": "kt", "demo": "kt", "detect": "kt", "export": "converters", "convert": "converters"}
    assert registered("caffekt.parity_backends")["onnxruntime"].value == \
        "caffekt.converters.parity_backend:onnxruntime_forward"


def test_help_runs_without_importing_the_heavy_parts():
    code = ("import sys; from caffe_compat import cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'cv2', 'onnxruntime', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
