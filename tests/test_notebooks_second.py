"""The second half of the papers on their quick profiles (see tests/test_notebooks.py)."""

import pytest
from test_notebooks import NOTEBOOKS, SECOND_HALF, run_and_check_paper


@pytest.mark.notebook
@pytest.mark.parametrize("name", [p.stem for p in NOTEBOOKS if p.stem in SECOND_HALF])
def test_paper_runs_on_quick_profile(name, tmp_path):
    run_and_check_paper(name, tmp_path)
