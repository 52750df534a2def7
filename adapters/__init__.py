"""Model-specific knowledge: which functions and locals hold attention, and how to label them."""
