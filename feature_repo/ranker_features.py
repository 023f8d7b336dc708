"""The feature service the ranking service reads."""

from feast import FeatureService
from track_sids import track_sids
from user_history import user_history

ranker_features = FeatureService(
    name="ranker_features",
    features=[track_sids, user_history],
    description="Track SIDs and user history for the DIN / MCCA ranker.",
)
