"""Measures: rates and proportions by interval and groups, standardisation, hospitals."""
