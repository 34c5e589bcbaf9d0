"""The toy method study (README: the toy world): every method, a small grid, 3 training seeds, two
levels of reference mismatch, chosen on validation prompts and reported on test prompts.

    python scripts/toy_study.py [--out results/toy_study] [--jobs 2] [--seeds 0,1,2] [--levels low,high]

Resumable: rerun the same command after a stop; finished runs are kept. The work is in
t2i_align/toy/study.py (runs) and t2i_align/toy/study_report.py (analysis).
"""

from t2i_align.toy.study import main

if __name__ == "__main__":
    main()
