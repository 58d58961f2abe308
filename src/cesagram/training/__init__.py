"""Training: from the canonical corpus to fitted models.

`examples` turns corpus tables into rendered text examples for the two models (message-level
indicators with their context, conversation-level risk windows as in eSPD); `batches` tokenises
them once and serves padded, length-grouped batches through a Lightning data module.
"""
