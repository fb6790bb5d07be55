"""Example prunekit plug-in: a scorer (``weight_product``) and a dataset (``stripes``), registered by entry points."""
