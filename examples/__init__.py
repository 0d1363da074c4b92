"""Worked examples of embedding asyncingest; not part of the installed package."""
