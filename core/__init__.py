"""The kit shared by every stage: atomic JSON, progress display, accelerator, schedule, optimizer, recipes.

A neutral package so that ``data_prep``, ``pretrain`` and ``finetune`` import it without importing each
other's loops (see ARCHITECTURE.md).
"""
