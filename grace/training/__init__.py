"""The training loop shared by every objective and what surrounds it: the loop (``trainer``), the
cross-setting checks run at start-up (``validation``), checkpoints and resumes (``checkpoint``, ``resume``),
the held-out set and the reward-hacking guards (``heldout``, ``guards``), where numbers go
(``run_logger``), and best-of-k demonstrations for ``grace-sft sample`` (``demonstrations``).
"""
