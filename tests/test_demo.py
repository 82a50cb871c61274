"""`make demo` end to end: tools/demo.py (what `make demo` runs after set-up) starts the real ComfyUI server
headless, runs the shipped basic workflow and writes an mp4 with sound, saying the weights are untrained."""
import subprocess
import sys

import av

from conftest import REPO


def test_demo_writes_a_video_with_sound_and_says_the_weights_are_random(tmp_path):
    result = subprocess.run([sys.executable, "tools/demo.py", "--out", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=1200)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert out.count("RANDOM weights") == 2, "the untrained warning must come before and after"
    assert "stage timings: " in out and "SonicSampler" in out
    videos = list(tmp_path.rglob("*.mp4"))
    assert len(videos) == 1 and str(videos[0]) in out
    with av.open(str(videos[0])) as container:
        assert container.streams.video and container.streams.audio
        assert sum(1 for _ in container.decode(video=0)) == 2 * 48 - 1  # 3.84 s → 48 frames → RIFE ×2
