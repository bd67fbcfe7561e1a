"""URLconf and views for the Django adapter tests: function, class-based, async, DRF views."""
