"""A generated corpus of hostile inputs run through the CLI in-process.

Every case must end either in a normal result (exit 0) or in a clean exit (2, or 130 for Ctrl-C)
with exactly one error line on stderr that names the culprit (a file, key, value or flag), and
never in a traceback or a hang. The corpus is built in ``tmp_path`` (never committed): malformed
and unusual images, bad configs, and bad argument combinations. The summary line printed at the
end gives the number of cases and of raw tracebacks (must be 0).
"""

import io
import os
import signal
import struct
import zlib

import numpy as np
import pytest
import yaml
from PIL import Image

from reidkit.cli import main

from reidkit_testing import TINY_RUN

SMALL = ["--set", "data.height=32", "--set", "data.width=16", "--device", "cpu"]
RESULTS = {"cases": 0, "tracebacks": 0}


@pytest.fixture(autouse=True)
def no_hang():
    """A case that blocks (e.g. opening a FIFO) fails after 60 s instead of hanging the suite."""

    def timeout(*_):
        raise TimeoutError("case hung for 60 s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def run(capsys, argv, culprit=None, ok=False):
    """Run ``reidkit argv``; check a clean end; return (code, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    RESULTS["cases"] += 1
    if "Traceback" in out + err:
        RESULTS["tracebacks"] += 1
    assert "Traceback" not in out + err, (argv, err)
    errors = [line for line in err.splitlines() if line.strip() and not line.startswith("reidkit: warning:")]
    if ok:
        assert code == 0, (argv, err)
        return code, out, err
    assert code == 2, (argv, code, err)
    assert len(errors) == 1, (argv, err)
    if culprit is not None:
        assert culprit in errors[0], (argv, culprit, errors[0])
    return code, out, err


# ---------------------------------------------------------------------------- image corpus
def _png_bytes(img):
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_bytes(img, **kw):
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", **kw)
    return buffer.getvalue()


def _person(seed=0, size=(16, 32)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _png_bomb(width=30000, height=30000):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _jpeg_bomb():
    data = bytearray(_jpeg_bytes(_person()))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)  # height, width
    return bytes(data)


def bad_images():
    """name -> bytes of files that cannot be used as images."""
    jpeg, png = _jpeg_bytes(_person()), _png_bytes(_person())
    cases = {f"trunc_jpeg_{n}.jpg": jpeg[:n] for n in (2, 20, 200, len(jpeg) // 2, len(jpeg) - 2)}
    cases.update({f"trunc_png_{n}.png": png[:n] for n in (8, 30, 100, len(png) // 2, len(png) - 40)})
    corrupt = bytearray(png)
    corrupt[60:80] = b"\x00" * 20
    cases.update({
        "zero.jpg": b"", "zero.png": b"", "random.jpg": np.random.default_rng(1).bytes(2000),
        "random.png": np.random.default_rng(2).bytes(50), "text.png": b"just some text, not pixels\n" * 10,
        "html.jpg": b"<html><body>not an image</body></html>", "corrupt_crc.png": bytes(corrupt),
        "bomb.png": _png_bomb(), "bomb.jpg": _jpeg_bomb(), "wide_bomb.png": _png_bomb(200000, 300),
    })
    return cases


def odd_but_valid_images():
    """name -> PIL image of modes and shapes that must read fine."""
    rgb = _person(3)
    return {
        "palette.png": rgb.convert("P"), "gray.png": rgb.convert("L"), "bilevel.png": rgb.convert("1"),
        "rgba.png": rgb.convert("RGBA"), "la.png": rgb.convert("LA"), "cmyk.jpg": rgb.convert("CMYK"),
        "gray16.png": Image.fromarray((np.arange(512).reshape(32, 16) * 100).astype(np.uint16)),
        "tiny.png": rgb.resize((1, 1)), "tall.png": rgb.resize((2, 900)),
        "progressive.jpg": rgb, "space and ünïcode name.png": rgb, "-leading-dash.png": rgb,
        "x" * 200 + ".png": rgb,
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A ``folder``-layout dataset of good images plus the hostile files, each in its own place."""
    root = tmp_path_factory.mktemp("corpus")
    good = root / "good"
    for split, cam in (("query", 1), ("gallery", 2)):
        (good / split).mkdir(parents=True)
        for pid in (1, 2, 3):
            _person(pid * 10 + cam).save(good / split / f"{pid:04d}_c{cam}_0.png")
    bad = root / "bad"
    bad.mkdir()
    for name, data in bad_images().items():
        (bad / name).write_bytes(data)
    os.mkfifo(bad / "fifo.jpg")
    (bad / "folder.jpg").mkdir()
    os.symlink(bad / "does-not-exist.png", bad / "dangling.png")
    os.symlink(bad / "fifo.jpg", bad / "link_to_fifo.jpg")
    odd = root / "odd"
    odd.mkdir()
    for name, img in odd_but_valid_images().items():
        kw = {"progressive": True} if name.startswith("progressive") else {}
        img.save(odd / name, **kw)
    os.symlink(odd / "gray.png", odd / "symlink.png")
    return root


def _gallery_with(root, tmp_path, path):
    """A copy of the good gallery plus ``path`` (by symlink), named like gallery pid 1."""
    gallery = tmp_path / "gallery"
    gallery.mkdir(exist_ok=True)
    for p in (root / "good" / "gallery").iterdir():
        os.symlink(p, gallery / p.name)
    target = gallery / f"0001_c2_{path.name}"
    os.symlink(path, target)
    return gallery, target


BAD_NAMES = sorted(bad_images()) + ["fifo.jpg", "folder.jpg", "dangling.png", "link_to_fifo.jpg"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_image_as_query_and_in_gallery(corpus, tmp_path, capsys, name):
    bad = corpus / "bad" / name
    good = corpus / "good"
    base = ["search", "--model", "osnet_x0_25", "--output", str(tmp_path / "grid.png"), *SMALL]
    run(capsys, base + ["--gallery", str(good / "gallery"), "--query", str(bad)], culprit=name)
    gallery, target = _gallery_with(corpus, tmp_path, bad)
    query = str(good / "query" / "0001_c1_0.png")
    if bad.is_dir():  # a folder named like an image is walked into, not read
        return
    run(capsys, base + ["--gallery", str(gallery), "--query", query], culprit=target.name)
    _, _, err = run(capsys, base + ["--gallery", str(gallery), "--query", query, "--set", "data.skip_unreadable=true"], ok=True)
    assert "skipping 1 unreadable" in err and target.name in err


@pytest.mark.parametrize("name", ["trunc_jpeg_200.jpg", "bomb.png", "fifo.jpg", "random.png"])
def test_bad_image_in_an_evaluated_dataset(corpus, tmp_path, capsys, name):
    """eval / extract over a folder dataset (with a loader worker process) name the bad file;
    data.skip_unreadable drops it with a warning that lists it."""
    root = tmp_path / "ds"
    for split in ("query", "gallery"):
        (root / split).mkdir(parents=True)
        for p in (corpus / "good" / split).iterdir():
            os.symlink(p, root / split / p.name)
    os.symlink(corpus / "bad" / name, root / "gallery" / f"0002_c2_{name}")
    args = ["--model", "osnet_x0_25", "--dataset", "folder", "--root", str(root), *SMALL,
            "--set", "data.num_workers=1"]
    run(capsys, ["eval", *args], culprit=name)
    run(capsys, ["extract", *args, "--output", str(tmp_path / "f.npz")], culprit=name)
    _, out, err = run(capsys, ["eval", *args, "--set", "data.skip_unreadable=true"], ok=True)
    assert "rank1=" in out and name in err


def test_bad_image_in_training_data(corpus, tmp_path, capsys):
    """An unreadable training image inside a worker process: one line naming it; skipped with
    data.skip_unreadable even when it held an identity's only image (relabelled after drop)."""
    root = tmp_path / "train"
    (root / "train").mkdir(parents=True)
    for pid in range(1, 6):
        for cam in (1, 2):
            _person(pid * 7 + cam).save(root / "train" / f"{pid:04d}_c{cam}_0.png")
    os.symlink(corpus / "bad" / "trunc_png_100.png", root / "train" / "0009_c1_0.png")
    cfg = {**TINY_RUN, "data": {**TINY_RUN["data"], "name": "folder", "root": str(root), "options": {"mode": "train"},
                                "eval_name": "folder", "eval_root": str(corpus / "good"), "num_workers": 1,
                                "num_pids_per_batch": 3, "num_instances": 2}}
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    run(capsys, ["train", str(cfg_file), "--output", str(tmp_path / "r1")], culprit="0009_c1_0.png")
    _, _, err = run(capsys, ["train", str(cfg_file), "--output", str(tmp_path / "r2"),
                             "--set", "data.skip_unreadable=true"], ok=True)
    assert "0009_c1_0.png" in err


@pytest.mark.parametrize("name", sorted(odd_but_valid_images()) + ["symlink.png"])
def test_unusual_but_valid_images_just_work(corpus, tmp_path, capsys, name):
    gallery = str(corpus / "good" / "gallery")
    _, out, _ = run(capsys, ["search", "--model", "osnet_x0_25", "--gallery", gallery, "--query",
                             str(corpus / "odd" / name), "--output", str(tmp_path / "g.png"), *SMALL], ok=True)
    assert "query" in out


def test_exif_orientation_is_applied(tmp_path):
    from reidkit.data import read_image

    img = _person(5, size=(20, 40))  # W=20, H=40
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert read_image(str(tmp_path / "rot.jpg")).size == (40, 20)


# ---------------------------------------------------------------------------- bad configs
def _config(tmp_path, patch: dict | str | bytes, name="cfg.yaml"):
    path = tmp_path / name
    if isinstance(patch, bytes):
        path.write_bytes(patch)
    elif isinstance(patch, str):
        path.write_text(patch)
    else:
        data = yaml.safe_load(yaml.safe_dump(TINY_RUN))
        for key, value in patch.items():
            node = data
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        path.write_text(yaml.safe_dump(data))
    return path


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)
BAD_CONFIGS = {
    "optim.lr": -0.1, "optim.lr ": 0, "optim.lr  ": float("inf"), "optim.lr   ": float("nan"),
    "seed": -1, "data.num_pids_per_batch": 100, "data.num_instances": 0, "train.max_epochs": 0,
    "train.max_epochs ": -3, "train.eval_every": -1, "train.iters_per_epoch": 0, "train.max_minutes": -5,
    "train.device": "gpu", "data.height": 0, "data.flip_p": 2.0, "data.sampler": "shuffle",
    "data.num_workers": -1, "eval.num_workers": -2, "data.resize": [1], "eval.metric": "manhattan", "eval.max_rank": 0,
    "msgr.norm": "l3", "msgr.stages": [0], "optim.name": "rmsprop", "sched.name": "poly",
    "sched.milestones": ["a"], "sched.gamma": 0, "mutual.peers": [1], "loss": {},
    "loss.arcface": {"weight": 1}, "loss.triplet": {"margn": 0.3}, "loss.ce": {"weight": "x"},
    "loss.ce ": {"start_epoch": -1}, "loss.triplet ": {"distance": "hamming"},
    "model.name": "resnet9000", "model.kwargs": {"no_such_option": 1}, "data.name": "no_such_dataset",
    "data.options": {"no_such_option": 3}, "sched.by_time": True, "optim.lr    ": "fast",
}
RAW_CONFIGS = {
    "empty": ("", "empty"), "comments": ("# nothing here\n# at all\n", "empty"),
    "list": ("- a\n- b\n", "mapping"), "duplicate": ("seed: 1\nseed: 2\n", "duplicate key 'seed'"),
    "bomb": (BOMB, "aliases"), "invalid": ("data: {name: [\n", "invalid YAML"),
    "tabs": ("data:\n\tname: x\n", "invalid YAML"), "unknown_section": ("trainer: {epochs: 3}\n", "trainer"),
    "not_utf8": (b"seed: 1\nmodel: {name: \xff\xfe}\n", "UTF-8"),
}


@pytest.mark.parametrize("key", sorted(BAD_CONFIGS))
def test_bad_config_values(tmp_path, capsys, key):
    path = _config(tmp_path, {key.strip(): BAD_CONFIGS[key]})
    culprit = key.strip().split(".")[-1]
    if key.startswith("loss"):
        culprit = "loss"
    if key in ("data.options", "model.kwargs"):
        culprit = "no_such_option"
    run(capsys, ["train", str(path), "--output", str(tmp_path / "run")], culprit=culprit)
    assert not (tmp_path / "run").exists(), "a run directory was written for a bad config"


@pytest.mark.parametrize("name", sorted(RAW_CONFIGS))
def test_bad_config_files(tmp_path, capsys, name):
    text, culprit = RAW_CONFIGS[name]
    path = _config(tmp_path, text)
    run(capsys, ["train", str(path), "--output", str(tmp_path / "run")], culprit=culprit)
    assert not (tmp_path / "run").exists()


BAD_SETS = ["optim.lr", "=3", "optim.lr=[", "optim..lr=1", "seed.x=1", "optim.lr=-1", "data.height=abc"]


@pytest.mark.parametrize("item", BAD_SETS)
def test_bad_overrides(tmp_path, capsys, tiny_config_file, item):
    run(capsys, ["train", str(tiny_config_file), "--output", str(tmp_path / "run"), "--set", item],
        culprit=item.split("=")[0].split(".")[-1] or "--set")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- bad arguments
def bad_arguments(tiny_run, tmp_path, corpus):
    ck = str(tiny_run / "last.pt")
    img = str(corpus / "good" / "query" / "0001_c1_0.png")
    gal = str(corpus / "good" / "gallery")
    search = ["search", "--checkpoint", ck, "--gallery", gal, "--query", img]
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    return [
        (search + ["--topk", "-1"], "--topk"), (search + ["--topk", "0"], "--topk"), (search + ["--topk", "x"], "--topk"),
        (search + ["--model", "osnet_x0_25"], "--checkpoint"), (search + ["--pretrained", img], "--pretrained"),
        (search + ["--pattern", "("], "--pattern"), (search + ["--pattern", "abc"], "pid"),
        (search + ["--output", "grid"], "--output"), (search + ["--device", "cuda"], "cuda"),
        (search + ["--device", "tpu"], "tpu"), (search[:-2] + ["--query", str(tmp_path / "nope.png")], "nope.png"),
        (["search", "--checkpoint", ck, "--gallery", str(tmp_path / "nodir"), "--query", img], "nodir"),
        (["search", "--checkpoint", ck, "--gallery", str(empty), "--query", img], "no images"),
        (["eval", "--model", "osnet_x0_25"], "--dataset"), (["eval"], "--checkpoint"),
        (["eval", "--checkpoint", str(tmp_path / "missing.pt")], "missing.pt"),
        (["eval", "--checkpoint", str(tmp_path)], "not a regular file"),
        (["eval", "--checkpoint", ck, "--dataset", "nosuch"], "nosuch"),
        (["eval", "--checkpoint", ck, "--dataset-option", "novalue"], "key=value"),
        (["eval", "--checkpoint", ck, "--dataset-option", "bogus=1"], "bogus"),
        (["eval", "--checkpoint", ck, "--json", str(tmp_path / "m.txt")], "--json"),
        (["eval", "--checkpoint", ck, "--set", "eval.metric=l7"], "metric"),
        (["eval", "--model", "osnet_x0_25", "--dataset", "cuhk01", "--root", str(tmp_path / "nocuhk")], "nocuhk"),
        (["eval", "--model", "no_such_model", "--dataset", "synthetic"], "no_such_model"),
        (["extract", "--checkpoint", ck, "--output", str(tmp_path / "f.txt")], "--output"),
        (["actmap", "--checkpoint", ck, "--images", img, "--stage", "0"], "--stage"),
        (["actmap", "--checkpoint", ck, "--images", img, "--stage", "99"], "--stage 99"),
        (["train", str(tmp_path / "nope.yaml")], "nope.yaml"), (["train", str(tmp_path)], "not a regular file"),
        (["demo", "--minutes", "-1"], "--minutes"), (["nosuchcommand"], "nosuchcommand"), ([], "command"),
        (["eval", "--checkpoint", ck, "--input-size", "64", "32"], "--input-size"),
        (["eval", "--model", str(tmp_path / "missing.onnx"), "--dataset", "synthetic"], "missing.onnx"),
        (["eval", "--model", img, "--dataset", "synthetic"], "0001_c1_0.png"),
        (["eval", "--checkpoint", ck, "--single-shot", "0"], "--single-shot"),
        (["eval", "--checkpoint", ck, "--set", "eval.rerank.k9=3"], "rerank"),
        (["eval", "--checkpoint", ck, "--rerank", "--set", "eval.rerank.lambda_value=2"], "lambda_value"),
        (["eval", "--checkpoint", ck, "--backend", "tensorrt"], "--backend"),
        (["export", "--checkpoint", ck, "--output", str(tmp_path / "m.pt")], "--output"),
        (["export", "--checkpoint", ck, "--output", str(tmp_path / "m.onnx"), "--int8"], "--calibration"),
        (["export", "--checkpoint", ck, "--output", str(tmp_path / "m.onnx"), "--fp16", "--int8"], "--fp16"),
        (["export", "--checkpoint", ck, "--output", str(tmp_path / "m.onnx"), "--calibration", gal], "--int8"),
        (["export", "--checkpoint", ck, "--output", str(tmp_path / "m.onnx"), "--dynamic-batch",
          "--batch-size", "4"], "--batch-size"),
        (["export", "--model", str(tmp_path / "x.onnx"), "--output", str(tmp_path / "m.onnx")], ".onnx"),
    ]


def test_bad_arguments(tiny_run, tmp_path, corpus, capsys):
    for argv, culprit in bad_arguments(tiny_run, tmp_path, corpus):
        run(capsys, argv, culprit=culprit)


def model_file_cases(tmp_path):
    """Weights and ONNX files that do not fit what the command is asked to do."""
    import onnx
    import torch

    from reidkit.inference.convert import torch_to_onnx
    from reidkit.models import create_model
    from reidkit.models import torchreid

    zoo = tmp_path / "osnet_x0_25_torchreid.pth"  # torchreid's x0.25 layout, given for x1.0
    torch.save(torchreid.to_torchreid(create_model("osnet_x0_25"), "osnet"), zoo)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    fixed = tmp_path / "fixed.onnx"  # no metadata, fixed (1, 3, 32, 16) input
    onnx.save(torch_to_onnx(net.eval(), (32, 16), batch_size=1), str(fixed))
    corrupt = tmp_path / "corrupt.onnx"  # a real file cut in half
    corrupt.write_bytes(fixed.read_bytes()[: fixed.stat().st_size // 2])
    stats = ["--mean", "0.5", "0.5", "0.5", "--std", "0.2", "0.2", "0.2"]
    out = str(tmp_path / "m.onnx")
    return [
        (["eval", "--model", "osnet_x1_0", "--pretrained", str(zoo), "--dataset", "synthetic"],
         "torchreid's osnet_x0_25, not osnet_x1_0"),
        (["eval", "--model", str(corrupt), "--dataset", "synthetic"], "corrupt.onnx"),
        (["eval", "--model", str(fixed), "--dataset", "synthetic", "--input-size", "64", "32", *stats],
         "--input-size 64 32 contradicts the graph's fixed input size 32 x 16"),
        (["export", "--model", "osnet_x0_25", "--output", out, "--opset", "99"], "--opset"),
        (["export", "--model", "osnet_x0_25", "--output", out, "--check-dataset", "synthetic"], "--check-dataset"),
    ]


def test_bad_model_files(tmp_path, capsys):
    for argv, culprit in model_file_cases(tmp_path):
        _, out, _ = run(capsys, argv, culprit=culprit)
        assert out == "", (argv, out[:200])
    assert not (tmp_path / "m.onnx").exists()


def test_ctrl_c_is_one_line_and_130(monkeypatch, tiny_run, capsys):
    import reidkit.cli.evaluate as evaluate

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "load_model_and_config", interrupted)
    assert main(["eval", "--checkpoint", str(tiny_run / "last.pt")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "reidkit eval: interrupted"


def test_zz_summary(capsys):
    """The corpus's size and its count of raw tracebacks (printed with -s; asserted zero)."""
    with capsys.disabled():
        print(f"\ncorpus: {RESULTS['cases']} CLI cases, {RESULTS['tracebacks']} raw tracebacks")
    assert RESULTS["tracebacks"] == 0
