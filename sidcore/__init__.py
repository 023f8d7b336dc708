"""sidcore: the floor every other package stands on (settings, artifact registry, catalog and
data-set readers, logging). It imports none of sidstream's other packages."""
