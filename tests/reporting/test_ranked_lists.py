import numpy as np
from PIL import Image

from reidkit.data.records import ImageRecord
from reidkit.reporting.ranked_lists import QUERY, RIGHT, WRONG, ranked_lists_image


def test_matches_are_framed_by_identity_and_same_camera_images_skipped(tmp_path):
    for name in "qabc":
        Image.new("RGB", (20, 40), (0, 0, 255)).save(tmp_path / f"{name}.png")
    rec = lambda name, pid, camid: ImageRecord(str(tmp_path / f"{name}.png"), pid, camid)  # noqa: E731
    query = [rec("q", 1, 0)]
    gallery = [rec("a", 1, 0), rec("b", 2, 1), rec("c", 1, 1)]        # a: same identity and camera, skipped
    distmat = np.array([[0.1, 0.2, 0.3]])
    out = ranked_lists_image(query, gallery, distmat, [0], tmp_path / "r.png", top_k=2, size=(40, 20), border=2)
    picture = np.asarray(Image.open(out))
    frame = 2 + 2                                       # black outline, colour (border=2), white ring
    cell_w, gap, header = 20 + 2 * frame, 12, 18
    starts = [0, cell_w + gap, 2 * cell_w + gap]
    assert [tuple(picture[header + 1, x + 1]) for x in starts] == [QUERY, WRONG, RIGHT]   # query, b (pid 2), c
    assert [tuple(picture[header, x]) for x in starts] == [(0, 0, 0)] * 3            # the black outline
    assert tuple(picture[header + 3, starts[2] + 3]) == (255, 255, 255)                # the white ring
    assert tuple(picture[header + 20, cell_w + gap + 10]) == (0, 0, 255)  # the image inside the frame
    label = picture[header + 40 + 2 * frame:, starts[2]:starts[2] + cell_w]          # "#2 d=0.300" under c
    assert (label < 128).any()
