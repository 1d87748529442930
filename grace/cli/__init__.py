"""Every console script, one file each: ``grace-train`` (``train``), ``grace-sft`` (``sft``), ``grace-eval``
(``eval``), ``grace-encode`` (``encode``), ``grace-index`` (``index``); ``grace-report`` is
``grace.runs.report``. ``shared_arguments`` holds what grace-encode and grace-index read alike.
"""
