"""What several filters share (concept matching, nearest neighbours, embedding matrices, crops, language
id): helpers, not filters, so filter discovery does not look in here."""
