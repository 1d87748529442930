"""What people read of an explained similarity (``grace.embedding.attribution``): the terminal text with the
strongest tokens marked (``terminal``), and one self-contained HTML page with tokens shaded by what they add
to the cosine (``html``). Rendering only: the numbers come from the embedding layer."""
