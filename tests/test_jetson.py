"""Device profiles as data, and what a Jetson says about itself (issue 5, requirement 3).

The Jetson readers take a file-system root; the fixtures here are folders holding
the files a JetPack image has, with the text real boards carry:

* ``etc/nv_tegra_release``: ``# R32 (release), REVISION: 7.1, GCID: ...`` (L4T 32.7.1);
* ``proc/device-tree/model``: ``NVIDIA Jetson Nano Developer Kit`` and a NUL;
* ``var/lib/nvpmodel/status`` (``pmode:0001``) and ``etc/nvpmodel.conf``.
"""

import os

import pytest

import edgeinfer
from edgeinfer import doctor, jetson
from edgeinfer.conversion import tensorrt as trt_recipe
from edgeinfer.errors import UsageError
from edgeinfer.profiles import PROFILES, resolve_target, workspace_mb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "models", "digits_cnn.onnx")

NANO_RELEASE = ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
                "DATE: Sat Feb 19 17:05:08 UTC 2022\n# KERNEL_VARIANT: oot\n")
NVPMODEL_CONF = ("< PARAM TYPE=FILE NAME=CPU_ONLINE >\nCORE_0 /sys/devices/system/cpu/cpu0/online\n"
                 "< POWER_MODEL ID=0 NAME=MAXN >\nCPU_ONLINE CORE_0 1\n"
                 "< POWER_MODEL ID=1 NAME=5W >\nCPU_ONLINE CORE_0 1\n")


def board(tmp_path, model=None, release=None, pmode=None, conf=NVPMODEL_CONF):
    """A fake root folder with a Jetson's files (only those given)."""
    root = tmp_path / "root"
    files = {}
    if model is not None:
        files["proc/device-tree/model"] = model.encode() + b"\0"
    if release is not None:
        files["etc/nv_tegra_release"] = release.encode()
    if pmode is not None:
        files["var/lib/nvpmodel/status"] = "pmode:{:04d} fmode:normal\n".format(pmode).encode()
        files["etc/nvpmodel.conf"] = conf.encode()
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    root.mkdir(exist_ok=True)
    return str(root)


# -- profiles as data ------------------------------------------------------------------------

def test_every_profile_says_backend_fast_precisions_and_budget():
    for name in ("jetson-nano", "jetson-tx2", "jetson-xavier-nx", "jetson-orin-nano",
                 "jetson-agx-orin", "jetson-orin", "intel-cpu", "x86-cpu", "arm64-cpu"):
        profile = PROFILES[name]
        assert profile.name == name and profile.backend in ("tensorrt", "onnxruntime",
                                                             "openvino")
        assert profile.precisions and profile.precisions[-1] == "fp32"
    jetsons = [p for p in PROFILES.values() if p.backend == "tensorrt"]
    for profile in jetsons:
        assert profile.gpu_arch and profile.compute_capability and profile.tensorrt
        assert profile.jetpack and profile.python and profile.memory_mb
        assert profile.memory_mb < profile.board_memory_mb  # shared with the CPU and OS
        assert ("int8" in profile.precisions) == (profile.int8_note is None)


@pytest.mark.parametrize("name, arch, compute, tensorrt, jetpack, python, fast, dla", [
    ("jetson-nano", "Maxwell", "5.3", "8.2.1", "4.6.1", "3.6", ("fp16", "fp32"), 0),
    ("jetson-tx2", "Pascal", "6.2", "8.2.1", "4.6.1", "3.6", ("fp16", "fp32"), 0),
    ("jetson-xavier-nx", "Volta", "7.2", "8.5.2", "5.1", "3.8", ("int8", "fp16", "fp32"), 2),
    ("jetson-orin-nano", "Ampere", "8.7", "10.3.0", "6.2", "3.10", ("int8", "fp16", "fp32"), 0),
    ("jetson-agx-orin", "Ampere", "8.7", "10.3.0", "6.2", "3.10", ("int8", "fp16", "fp32"), 2),
])
def test_jetson_profiles(name, arch, compute, tensorrt, jetpack, python, fast, dla):
    p = PROFILES[name]
    assert (p.gpu_arch, p.compute_capability, p.tensorrt, p.jetpack, p.python, p.precisions,
            p.dla_cores) == (arch, compute, tensorrt, jetpack, python, fast, dla)
    gpu = trt_recipe.target_gpu(p)
    assert (gpu.arch, gpu.compute, gpu.tensorrt, gpu.jetpack) == (arch, compute, tensorrt,
                                                                  jetpack)


def test_budgets_size_the_builder_workspace():
    assert PROFILES["jetson-nano"].board_memory_mb == 4096
    assert [workspace_mb(PROFILES[n]) for n in ("jetson-nano", "jetson-tx2", "jetson-orin-nano",
                                                "jetson-agx-orin", "arm64-cpu", "x86-cpu")] == \
        [512, 1024, 512, 1024, 256, None]
    assert trt_recipe.workspace_mb is workspace_mb  # the recipe suggests the profile's


def test_jetson_orin_stays_a_profile_and_the_tensorrt_alias():
    assert resolve_target("jetson-orin").name == "jetson-orin"
    assert resolve_target("tensorrt").name == resolve_target("jetson").name == "jetson-orin"
    assert resolve_target("Jetson-Nano").name == "jetson-nano"
    with pytest.raises(UsageError) as info:
        resolve_target("jetson-tx1")
    assert "jetson-agx-orin" in str(info.value) and "jetson-orin-nano" in str(info.value)


def test_int8_on_tx2_explains_why_and_offers_fp16(tmp_path):
    with pytest.raises(UsageError) as info:
        edgeinfer.convert(DEMO, target="jetson-tx2", precision="int8",
                          output=str(tmp_path / "x.eib"))
    text = str(info.value)
    assert text.startswith("INT8 is not fast on jetson-tx2: its Pascal GPU (sm_62) has no fast "
                           "INT8 path")
    assert "Use --precision fp16, jetson-tx2's fast precision." in text
    assert not os.path.exists(str(tmp_path / "x.eib"))


# -- reading a Jetson ------------------------------------------------------------------------

def test_nano_on_jetpack_4_6_1(tmp_path):
    root = board(tmp_path, "NVIDIA Jetson Nano Developer Kit", NANO_RELEASE, pmode=1)
    info = jetson.read_jetson(root)
    assert info.model == "NVIDIA Jetson Nano Developer Kit"
    assert info.l4t == "32.7.1" and info.profile == "jetson-nano"
    assert info.jetpack == jetson.JetPack("4.6.1", "8.2.1", "10.2", "3.6")
    assert info.power_mode == {"id": 1, "name": "5W"}
    assert info.release.startswith("# R32 (release), REVISION: 7.1")


@pytest.mark.parametrize("model, profile", [
    ("NVIDIA Orin Nano Developer Kit", None),           # no "Jetson": not claimed
    ("NVIDIA Jetson Orin Nano Developer Kit", "jetson-orin-nano"),
    ("Jetson AGX Orin", "jetson-agx-orin"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "jetson-orin"),
    ("NVIDIA Jetson Xavier NX Developer Kit", "jetson-xavier-nx"),
    ("quill", "jetson-tx2"),
    ("NVIDIA Jetson TX2", "jetson-tx2"),
    ("NVIDIA Jetson Nano 2GB Developer Kit", "jetson-nano"),
    ("Jetson-AGX", None),                                # AGX Xavier: no profile of its own
    ("Raspberry Pi 4 Model B Rev 1.4", None),
])
def test_module_names_map_to_profiles(model, profile):
    assert jetson.profile_for_model(model) == profile


@pytest.mark.parametrize("line, l4t", [
    ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref", "32.7.1"),
    ("# R35 (release), REVISION: 3.1, GCID: 32827747, BOARD: t186ref", "35.3.1"),
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic", "36.4.3"),
    ("# R32 (release), REVISION: 6, GCID: 1", "32.6.0"),
    ("garbage", None),
])
def test_l4t_release_line(line, l4t):
    assert jetson.parse_l4t(line) == l4t


def test_jetpack_table_ties_l4t_to_tensorrt():
    assert jetson.jetpack_for("35.2.1").tensorrt == "8.5.2"
    assert jetson.jetpack_for("36.4.0") == jetson.JetPack("6.1", "10.3.0", "12.6", "3.10")
    assert jetson.jetpack_for("32.6.1").tensorrt == "8.0.1"  # JetPack 4.6 itself
    assert jetson.jetpack_for("99.1.0") is None and jetson.jetpack_for(None) is None
    # The profiles' JetPack and TensorRT are rows of the table.
    shipped = dict((jp.jetpack, jp.tensorrt) for jp in jetson.L4T_RELEASES.values())
    for profile in PROFILES.values():
        if profile.jetpack:
            assert shipped[profile.jetpack] == profile.tensorrt, profile.name


def test_not_a_jetson(tmp_path):
    assert jetson.read_jetson(board(tmp_path, "Raspberry Pi 4 Model B Rev 1.4")) is None
    assert jetson.read_jetson(board(tmp_path)) is None


def test_unreadable_power_mode_and_unknown_release(tmp_path):
    root = board(tmp_path, "NVIDIA Jetson Xavier NX Developer Kit",
                 "# R99 (release), REVISION: 1.0, GCID: 1\n")
    info = jetson.read_jetson(root)
    assert info.l4t == "99.1.0" and info.jetpack is None and info.power_mode is None
    assert info.profile == "jetson-xavier-nx"
    root = board(tmp_path / "b", "NVIDIA Jetson Nano Developer Kit", NANO_RELEASE, pmode=7)
    assert jetson.read_jetson(root).power_mode == {"id": 7, "name": None}


# -- doctor on a Jetson ------------------------------------------------------------------------

def test_doctor_on_a_nano(tmp_path, monkeypatch):
    from edgeinfer.runtime.backends import tensorrt as trtb
    monkeypatch.setattr(trtb, "library_version", lambda: "8.2.1")
    monkeypatch.setattr(trtb, "cuda_binding_name", lambda: None)
    root = board(tmp_path, "NVIDIA Jetson Nano Developer Kit", NANO_RELEASE, pmode=0)
    report = doctor.collect(root=root)
    nano = report["jetson"]
    assert nano["jetpack"] == "4.6.1" and nano["tensorrt_expected"] == "8.2.1"
    assert nano["gpu"] == {"arch": "Maxwell", "compute": "5.3"} and nano["fast"] == ["fp16"]
    assert nano["tensorrt"] == "8.2.1" and nano["tensorrt_python"] is False
    lines = doctor.format_report(report).splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("jetson ")][0]
    assert lines[at:at + 5] == [
        "jetson     NVIDIA Jetson Nano Developer Kit: L4T 32.7.1 = JetPack 4.6.1 "
        "(TensorRT 8.2.1, CUDA 10.2)",
        "           profile jetson-nano: Maxwell GPU sm_53; fast here: FP16; INT8 not: its "
        "Maxwell GPU (sm_53) has no INT8 dot-product instructions (DP4A, compute capability "
        "6.1 and newer), so TensorRT runs INT8 there no faster than FP16",
        "           tensorrt 8.2.1 (library only; `sudo apt install python3-libnvinfer` for "
        "the Python package)",
        "           cuda binding missing: `pip3 install pycuda` (JetPack 4.6) or `pip3 install "
        "cuda-python` (JetPack 5/6)",
        "           power mode 0 (MAXN)"]


def test_doctor_off_a_jetson(tmp_path):
    report = doctor.collect(root=board(tmp_path))
    assert report["jetson"] is None
    assert "jetson     not a Jetson" in doctor.format_report(report).splitlines()
