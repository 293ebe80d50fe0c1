"""bench/machine.py's reader of /proc/cpuinfo, on a file the test writes: the first processor's block, and
its vector flags as `grep -o 'avx512[a-z_0-9]*\\|avx2\\|fma' | sort -u` would list them."""

from bench.machine import cpu_flags, cpu_info

CPUINFO = """processor\t: 0
model name\t: Test CPU @ 2.0GHz
flags\t\t: fpu sse avx fma avx2 avx512f avx512_vnni avx512bw avx_vnni

processor\t: 1
model name\t: Another CPU
flags\t\t: fpu avx512_bf16
"""


def test_cpu_info_is_the_first_processor_and_cpu_flags_its_vector_extensions(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    info = cpu_info(str(path))
    assert info["processor"] == "0" and info["model name"] == "Test CPU @ 2.0GHz"
    assert cpu_flags(str(path)) == ["avx2", "avx512_vnni", "avx512bw", "avx512f", "fma"]  # not avx, avx_vnni


def test_no_cpuinfo_is_empty_not_an_error(tmp_path):
    assert cpu_info(str(tmp_path / "absent")) == {} and cpu_flags(str(tmp_path / "absent")) == []
