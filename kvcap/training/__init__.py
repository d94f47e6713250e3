"""kvcap training: arguments, the two-stage schedule, the diversity monitor and the final export."""
