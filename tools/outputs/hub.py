"""Publishing a run's datasets to the Hugging Face Hub: the card and both configs' data files in one commit.

The card (`README.md`) names the configs `dpo` and `kto`, each reading its JSONL file as the train split, so
`load_dataset(REPO_ID, "dpo")` works as soon as the commit lands. The token comes from `HF_TOKEN`, the Hub's
address from `HF_ENDPOINT` (the Hub's own by default). A failure is one line that says nothing was lost.
"""

from __future__ import annotations

import os
from pathlib import Path

from tools.errors import ConfigError
from tools.rules.secrets import mask_secrets

PUBLISHED_FILES = ("README.md", "dpo.jsonl", "kto.jsonl", "report.html")


def _is_network_failure(error: BaseException) -> bool:
    """An HTTP error of the Hub or a failed connection, whichever HTTP library huggingface_hub uses.

    httpx and its fork httpx2 both name their base classes HTTPError and TransportError.
    """
    from huggingface_hub.errors import HfHubHTTPError

    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, HfHubHTTPError | OSError) or bool(names & {"HTTPError", "TransportError"})


def push_to_hub(output_dir: Path, repo_id: str, *, private: bool) -> str:
    """Create the dataset repository if needed and commit the card and data files; return the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError(f"--push-to-hub {repo_id}: the environment variable HF_TOKEN is not set; the datasets are "
                          f"kept in {output_dir}")
    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(output_dir / name))
                  for name in PUBLISHED_FILES]
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.create_commit(repo_id, repo_type="dataset", operations=operations,
                                   commit_message="fellowship: DPO and KTO preference datasets")
    except Exception as error:
        if not _is_network_failure(error):
            raise
        reason = mask_secrets(f"{type(error).__name__}: {error}".splitlines()[0])[:200]
        raise ConfigError(f"--push-to-hub {repo_id}: could not publish to {endpoint or 'the Hugging Face Hub'} "
                          f"({reason}); nothing is lost, the datasets are kept in {output_dir}: run the same "
                          "command again to publish") from None
    return str(commit.commit_url)
