"""`python -m batch report OUTPUT_URI`: what a published output says, for people and machines.

Reads an output folder or s3:// prefix file by file (only the columns it needs), folds each
file into small mergeable counts, and writes `report.html` (self-contained: charts are PNGs
inside the page) and `report.json`. The frame names no task; each task kind brings its own
section (sections/).

    source.py     which files, which columns, batches of them (local or s3:// via pyarrow)
    aggregate.py  the frame's mergeable counts (rows, outcomes, periods) and what every task's
                  counting shares per batch (language, period, segment values)
    sections/     one module per task kind (label, translation): its counts, report.json
                  section, charts, HTML and eval scoring; the registry is one dict
    frame.py      the options and the shared facts a section is built with
    alerts.py     the watched-share spike alarm against a trailing window
    build.py      output + run summary -> tasks -> counts -> the report dictionary (report.json)
    charts.py     what the kinds' matplotlib (Agg) charts share
    page.py       the HTML page around the kinds' sections
    notify.py     --notify: the alerts POSTed as JSON
    command.py    the click command

The command is imported from `batch.report.command`; importing this package stays cheap
(no matplotlib) so the CLI starts fast.
"""
