"""Time in a study: when follow-up starts (a lag) and ends (a calendar date), and the
splitting of follow-up by age band, calendar period and time since index (docs/time.md)."""
