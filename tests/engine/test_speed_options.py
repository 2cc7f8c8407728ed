"""Speed options change how fast a step runs, not what it computes.

One training step with each option (channels-last, torch.compile, threads, flushing denormals,
the in-memory image cache, bfloat16 autocast where the CPU has it) gives the loss and the parameters of the plain
step within float tolerance; the cached loader yields the pixels of the file loader.
"""

import copy

import pytest
import torch
from torch import nn

from reidkit.data import create_dataset, read_image
from reidkit.data.loader import ImageCache, ImageDataset
from reidkit.data.transforms import TransformConfig, build_transforms
from reidkit.engine import speed
from reidkit.engine.config import ConfigError, config_from_dict, load_config
from reidkit.engine.runtime import cpu_has_native_bf16
from reidkit.engine.trainer import Trainer, train_images
from reidkit_testing import TINY_RUN

# SGD, not Adam: Adam's first step is lr * sign(grad), which float rounding can flip where a
# gradient is ~0; an SGD step is linear in the gradient, so parameters compare within tolerance.
PLAIN = {**TINY_RUN, "optim": {"name": "sgd", "lr": 0.05}, "seed": 3}


def quiet(*_):
    pass


@pytest.fixture(autouse=True)
def _keep_process_settings():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def one_step(tmp_path, name: str, train=None, data=None, model=None, loss=None):
    """``(images, loss, parameter updates)`` of the first training step of PLAIN with the
    overrides; the updates are ``parameter after - parameter before`` by name."""
    cfg = copy.deepcopy(PLAIN)
    if loss is not None:
        cfg["loss"] = loss
    cfg["train"].update(train or {})
    cfg["data"].update(data or {})
    cfg["model"] = model or cfg["model"]
    trainer = Trainer(config_from_dict(cfg), tmp_path / name, log=quiet)
    trainer.method.train()
    trainer.method.on_epoch_start(0)
    trainer.loader.sampler.set_epoch(0)
    before = {k: v.detach().clone() for k, v in trainer.method.named_parameters()}
    batch, total, _ = trainer.train_step(next(iter(trainer.loader)))
    updates = {k: v.detach() - before[k] for k, v in trainer.method.named_parameters()}
    return batch.images.detach().contiguous(), float(total.detach()), updates


def assert_same_updates(updates, expected, tolerance: float) -> None:
    """Every parameter update within ``tolerance`` x the largest update. Float rounding alone
    reaches ~1e-4 of it here, ~1e-3 with channels-last (its weight gradients of the early,
    large-map convolutions sum in another order; in float64 both layouts agree to 1e-13); a
    wrong step is off by ~1."""
    assert updates.keys() == expected.keys()
    scale = max(float(u.abs().max()) for u in expected.values())
    for k in expected:
        torch.testing.assert_close(updates[k], expected[k], rtol=0, atol=tolerance * scale, msg=k)


OTHER_THREADS = 2 if torch.get_num_threads() == 1 else 1
OPTIONS = {  # option -> (train section, data section)
    "channels_last": ({"channels_last": True}, {}),
    "threads": ({"threads": OTHER_THREADS}, {}),
    "flush_denormal": ({"flush_denormal": True}, {}),
    "cache": ({}, {"cache": "memory"}),
    "reuse_memory": ({"reuse_memory": True}, {}),
    "all_but_compile": ({"channels_last": True, "threads": OTHER_THREADS, "flush_denormal": True}, {"cache": "memory"}),
}


def assert_same_step(plain, fast) -> None:
    (images, loss, updates), (images2, loss2, updates2) = plain, fast
    assert torch.equal(images, images2)  # the same batch, pixel for pixel (also from the cache)
    assert loss2 == pytest.approx(loss, rel=1e-4)
    assert_same_updates(updates2, updates, 5e-3)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_one_step_with_each_option_equals_the_plain_step(tmp_path, option):
    assert_same_step(one_step(tmp_path, "plain"), one_step(tmp_path, option, *OPTIONS[option]))


@pytest.mark.slow  # ~30 s on 2 busy cores: dynamo traces MobileNetV2's forward and backward
def test_one_compiled_step_equals_the_plain_step(tmp_path, monkeypatch):
    """The trainer's compile path (graph capture, AOTAutograd's backward) with the ``aot_eager``
    backend; inductor's C++ kernels are compared on a small block below."""
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "aot_eager")
    model = {"name": "mobilenet_v2"}  # traces in half the time of OSNet's many small modules
    plain = one_step(tmp_path, "plain", model=model)
    fast = one_step(tmp_path, "compile", {"compile": True}, {"cache": "memory"}, model)
    assert_same_step(plain, fast)


def test_amp_step_is_close_to_the_float32_step(tmp_path):
    """bfloat16 only where the CPU has it natively; elsewhere ``train.amp`` is the float32 step.

    With bf16, only the loss is compared, on cross-entropy alone. Seen on an Intel AMX CPU: with
    the batch-hard triplet, bf16 rounding of this random net's near-tied distances picks other
    hardest samples (triplet 1.99 vs 1.79); and the parameter updates of a randomly initialised
    net at batch 8 are not comparable in bf16 even with CE alone (cosine -0.01 to the float32
    update here; plain ``torch.autocast`` on MobileNetV2 outside reidkit: gradient cosine 0.37),
    while the CE loss agrees to 3e-4."""
    ce_only = {"ce": {"weight": 1.0, "label_smoothing": 0.1}}
    _, loss, params = one_step(tmp_path, "plain", loss=ce_only)
    _, loss2, params2 = one_step(tmp_path, "amp", {"amp": True}, loss=ce_only)
    if not cpu_has_native_bf16():
        assert loss2 == loss and all(torch.equal(params[k], params2[k]) for k in params)
        return
    assert loss2 == pytest.approx(loss, rel=1e-2)
    assert all(torch.isfinite(u).all() for u in params2.values()) and any(u.abs().max() > 0 for u in params2.values())


def test_channels_last_model_and_batches(tmp_path):
    cfg = copy.deepcopy(PLAIN)
    cfg["train"]["channels_last"] = True
    trainer = Trainer(config_from_dict(cfg), tmp_path / "run", log=quiet)
    convs = [m.weight for m in trainer.model.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    batch = trainer._batch(next(iter(trainer.loader)))
    assert batch.images.is_contiguous(memory_format=torch.channels_last)


SIZES = [(60, 160), (64, 128), (33, 70)]  # (W, H) of PNG files; CUHK01's crops are 60 x 160


@pytest.fixture()
def image_files(tmp_path):
    from PIL import Image

    paths = []
    for i, size in enumerate(SIZES):
        path = tmp_path / f"{i}.png"
        Image.effect_noise(size, 60 + 20 * i).convert("RGB").save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("train", [False, True])
def test_cached_loader_yields_the_pixels_of_the_file_loader(image_files, train):
    """The deterministic (test) transform, and the training one under the same seed."""
    samples = [(p, i, 0) for i, p in enumerate(image_files)]
    transform = build_transforms(TransformConfig(height=48, width=24), train=train)
    cache = ImageCache(image_files + image_files[:1], read_image)
    assert len(cache) == 3 and cache.nbytes == sum(3 * w * h for w, h in SIZES)
    from_files, from_cache = ImageDataset(samples, read_image, transform), ImageDataset(samples, cache, transform)
    for i in range(len(samples)):
        torch.manual_seed(i)
        expected = from_files[i][0]
        torch.manual_seed(i)
        assert torch.equal(from_cache[i][0], expected)


def test_cache_item_is_a_copy():
    from PIL import Image

    cache = ImageCache(["a"], lambda _: Image.new("RGB", (4, 8), (10, 20, 30)))
    cache("a").zero_()
    assert cache("a")[0, 0, 0] == 10


def test_cache_over_its_limit_is_refused_in_one_line(tmp_path):
    cfg = copy.deepcopy(PLAIN)
    cfg["data"].update(cache="memory", cache_max_mb=0.001)  # ~1 kB: a 32 x 16 image is 1.5 kB
    with pytest.raises(ConfigError, match=r"^data\.cache=memory: .*cache_max_mb=0\.001.*data\.cache: none$") as err:
        Trainer(config_from_dict(cfg), tmp_path / "run", log=quiet)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_cache_logs_what_it_holds(tmp_path):
    ds = create_dataset("synthetic", num_train_ids=4, num_test_ids=2, image_size=[32, 16])
    lines = []
    cache = train_images(ds, config_from_dict({"data": {"cache": "memory"}}).data, lines.append)
    assert len(cache) == len(ds.train) and f"{len(ds.train)} training images" in lines[0]
    assert train_images(ds, config_from_dict({}).data) is None


@pytest.mark.parametrize("override, match", [
    ("data.cache=disk", r"data\.cache='disk': expected 'none' or 'memory'"),
    ("data.cache_max_mb=0", r"data\.cache_max_mb=0\.0: expected MiB > 0"),
    ("train.threads=0", r"train\.threads=0: expected null or an integer >= 1"),
    ("train.compile=maybe", r"train\.compile"),
    ("train.channels_last=1", r"train\.channels_last"),
    ("train.flush_denormal=sometimes", r"train\.flush_denormal"),
    ("train.reuse_memory=often", r"train\.reuse_memory"),
])
def test_config_errors_are_one_line(override, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_compile_with_msgr_is_refused():
    with pytest.raises(ConfigError, match=r"train\.compile=True: expected false with msgr\.weight > 0"):
        load_config(None, ["train.compile=true", "msgr.weight=0.01"])


def test_compile_unavailable_is_one_line(tmp_path, monkeypatch):
    import torch._inductor.cpp_builder as cpp_builder

    def no_compiler():
        raise RuntimeError("no C++ compiler\nfound on PATH\n(long explanation)")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    cfg = copy.deepcopy(PLAIN)
    cfg["train"]["compile"] = True
    with pytest.raises(ConfigError, match=r"^train\.compile: torch\.compile is unavailable here \(RuntimeError: "
                                          r"no C\+\+ compiler\); set train\.compile: false$"):
        Trainer(config_from_dict(cfg), tmp_path / "run", log=quiet)
    assert not (tmp_path / "run").exists()


def test_compile_failure_on_the_first_step_is_one_line():
    def broken(x):
        raise ValueError("a page\nof dynamo output")

    fn = speed.CompiledForward(broken, backend="eager")
    with pytest.raises(speed.CompileFailed, match=r"^train\.compile: torch\.compile failed on the first step .*"
                                                 r"set train\.compile: false$") as err:
        fn(torch.zeros(1))
    assert "\n" not in str(err.value)


@pytest.mark.slow  # ~30 s on 2 busy cores: inductor writes and builds C++ kernels
def test_inductor_forward_and_backward_match_eager():
    """The real backend (C++ kernels) on a conv-bn-relu block: outputs and gradients of eager."""
    if speed.compile_unavailable(torch.device("cpu")):
        pytest.skip("torch.compile (inductor) is unavailable here")
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    twin = copy.deepcopy(block)
    x = torch.randn(4, 3, 16, 8)
    eager = block(x)
    eager.square().mean().backward()
    compiled = speed.CompiledForward(twin)(x)
    compiled.square().mean().backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(block.parameters(), twin.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5)


def test_resume_may_change_speed_options(tmp_path):
    """Speed keys are not part of what a resumed run must match: no config warning."""
    import warnings

    cfg = copy.deepcopy(PLAIN)
    Trainer(config_from_dict(cfg), tmp_path / "run", log=quiet).fit()
    cfg["train"]["channels_last"] = True
    cfg["data"]["cache"] = "memory"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(config_from_dict(cfg), tmp_path / "run", resume=True, log=quiet)
    cfg["train"]["max_epochs"] = 2
    with pytest.warns(UserWarning, match="config that differs"):
        Trainer(config_from_dict(cfg), tmp_path / "run", resume=True, log=quiet)


class _FakeLibc:
    def __init__(self, result: int = 1):
        self.calls, self.result = [], result

        def mallopt(param, value):
            self.calls.append((param, value))
            return self.result

        self.mallopt = mallopt


@pytest.mark.parametrize("result, expected", [(1, True), (0, False)])
def test_reuse_freed_memory_sets_glibc_mallopt_once(monkeypatch, result, expected):
    """The switch is glibc's ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``,
    made once per process; a refusal (0) reports False. Its speed effect is measured by
    benchmarks/bench_train.py and bench_extract.py, not asserted here."""
    fake = _FakeLibc(result)
    monkeypatch.setattr(speed, "_reusing", False)
    monkeypatch.setattr(speed.sys, "platform", "linux")
    monkeypatch.setattr(speed.ctypes, "CDLL", lambda name: fake)
    assert speed.reuse_freed_memory(False) is False and fake.calls == []
    assert speed.reuse_freed_memory() is expected
    assert fake.calls[:1] == [(-4, 0)]  # M_MMAP_MAX: large blocks from the heap
    if expected:
        assert fake.calls == [(-4, 0), (-1, speed.REUSE_TRIM_BYTES)]  # M_TRIM_THRESHOLD
        assert speed.reuse_freed_memory() is True and len(fake.calls) == 2  # once per process


def test_reuse_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(speed, "_reusing", False)
    monkeypatch.setattr(speed.sys, "platform", "darwin")
    assert speed.reuse_freed_memory() is False
    monkeypatch.setattr(speed.sys, "platform", "linux")

    def no_libc(name):
        raise OSError("no libc")

    monkeypatch.setattr(speed.ctypes, "CDLL", no_libc)
    assert speed.reuse_freed_memory() is False
