"""Files on disk: directories replaced all at once (``staging``) and names safe as file names everywhere
(``safe_names``). Imports nothing else of grace.
"""
