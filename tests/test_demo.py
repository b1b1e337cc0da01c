"""The README's main job: ``python -m landscape_widgets demo`` writes one self-contained page."""
import re
import subprocess
import sys


def test_demo_writes_self_contained_page(tmp_path):
    out = tmp_path / "demo.html"
    proc = subprocess.run([sys.executable, "-m", "landscape_widgets", "demo", "--out", str(out), "--resolution", "9",
                           "--epochs", "3", "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "wrote" in proc.stdout
    page = out.read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html>")
    # nothing is fetched: no external scripts, styles, images or fonts
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert not re.search(r"""import\s*\(?\s*["']https?://""", page)
