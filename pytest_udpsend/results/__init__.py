"""Layer 3, results: what is done with measurements after they are taken.

What a metric is (``metrics``), bounds from the assertion markers (``bounds``),
the saved JSON document (``store``), the baseline gate's statistics
(``compare``) and the HTML report (``report``).  No pytest.
"""
