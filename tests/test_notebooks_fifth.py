"""The fifth group of papers on their quick profiles: the tutorial alone, the longest quick run
(see tests/test_notebooks.py)."""

import pytest
from test_notebooks import papers_of, run_and_check_paper


@pytest.mark.notebook
@pytest.mark.parametrize("name", papers_of("fifth"))
def test_paper_runs_on_quick_profile(name, tmp_path):
    run_and_check_paper(name, tmp_path)
