"""Studies: experiments that compare model variants end to end (console commands of ``energyformer``)."""
