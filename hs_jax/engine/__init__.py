"""Generation and the systems built on it: one `generate` call over rows of mixed experts
(`engine`), planned into shape buckets (`call_plan`) over LoRA or full-weight experts
(`expert_sets`, `placement`), decoded in one jitted loop (`sampling`, `token_choice`,
`stops`, `text`) and counted (`costs`); multi-LLM systems run level by level with a cache
(`executor`) and scored as the utility f (`scoring`)."""
