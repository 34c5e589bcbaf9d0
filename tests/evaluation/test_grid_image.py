import numpy as np
import pytest
from PIL import Image

from t2i_align.evaluation.grid_image import comparison_grid


def solid(colour, size=(40, 30)):
    return Image.new("RGB", size, colour)


def test_grid_size_cells_and_labels():
    images = [[solid((255, 0, 0)), solid((0, 255, 0))], [solid((0, 0, 255)), solid((255, 255, 0))]]
    grid = comparison_grid(images, ["a red thing", "a blue thing"], ["base", "mapo"],
                           scores=[[0.1, 0.2], [0.3, 0.4]], cell=64, label_width=100,
                           header_height=20, score_height=16)
    assert grid.size == (100 + 2 * 64, 20 + 2 * (64 + 16))
    px = np.asarray(grid)
    # each cell holds its image, in row-major order, base first
    assert tuple(px[20 + 32, 100 + 32]) == (255, 0, 0)
    assert tuple(px[20 + 32, 100 + 64 + 32]) == (0, 255, 0)
    assert tuple(px[20 + 80 + 32, 100 + 32]) == (0, 0, 255)
    # labels are drawn: dark pixels in the header, the prompt column and the score lines
    assert (px[:20, 100:] < 100).any()
    assert (px[20:84, :100] < 100).any()
    assert (px[84:100, 100:164] < 100).any()


def test_grid_without_scores_and_shape_errors():
    grid = comparison_grid([[solid((9, 9, 9))]], ["p"], ["base"], cell=32, label_width=50, header_height=10)
    assert grid.size == (82, 42)
    with pytest.raises(ValueError, match="rows x 2"):
        comparison_grid([[solid((0, 0, 0))]], ["p"], ["base", "mapo"])
    with pytest.raises(ValueError, match="row labels"):
        comparison_grid([[solid((0, 0, 0))]], [], ["base"])
