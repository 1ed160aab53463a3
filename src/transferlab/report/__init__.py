"""The presentation: everything a reader of a study sees, read from the store (never trains).

Text tables and the CLI's blocks (tables), charts (figures), the computed conclusions
(conclusions), the Russian labels (ru), the architecture views (architecture), the notebook
as a view over a study (view) and the executed report (notebook).
"""
