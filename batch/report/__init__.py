"""`python -m batch report OUTPUT_URI`: what a published output says, for people and machines.

Reads an output folder or s3:// prefix file by file (only the columns it needs), folds each
file into small mergeable counts, and writes `report.html` (self-contained: charts are PNGs
inside the page) and `report.json`.

    source.py     which files, which columns, batches of them (local or s3:// via pyarrow)
    aggregate.py  pure, mergeable aggregation of pyarrow tables into counts
    alerts.py     the negative-share spike alarm against a trailing window
    build.py      counts -> the report dictionary (what report.json holds)
    charts.py     matplotlib (Agg) PNGs of that dictionary
    page.py       the HTML page
    command.py    the click command

The command is imported from `batch.report.command`; importing this package stays cheap
(no matplotlib) so the CLI starts fast.
"""
