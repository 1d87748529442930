"""What happens around a training job: its name and directory in a sweep (``job_names``), the one number it
hands a sweeper (``sweep_value``), what runs after the last step (``epilogue``), the console
(``console``), and the report of one or several runs (``report``, ``plots``).
"""
