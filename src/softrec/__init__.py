"""softrec: turn a small pretrained LLM into a sequential recommender, trained with SOFT."""

__version__ = "0.1.0"

from softrec.config import Config, load_config  # noqa: E402
from softrec.data.dataset import Domain, Item, PreparedDataset, Sample  # noqa: E402
from softrec.errors import UserError  # noqa: E402

__all__ = ["Config", "Domain", "Item", "PreparedDataset", "Sample", "UserError", "load_config", "__version__"]
