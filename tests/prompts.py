"""Instructions the end-to-end tests give the embedded LLM."""

#: Barge-in tests interrupt an answer while it plays, so it must be long whatever the recording
#: says: the pocketsphinx recordings are statements, which a 1.5B model otherwise tends to
#: repeat back in one sentence.
LONG_ANSWERS = ("You are a voice assistant who loves to talk. Whatever the user says, reply with at least "
                "six full sentences about it: what it means, an example, and a story. No lists, no markdown, "
                "never repeat the user's words.")

#: The browser demo test interrupts 0.8 s into the answer; four sentences keep it playing long
#: enough, and a shorter answer leaves the machine's two cores to the page's audio capture.
FOUR_SENTENCES = ("You are a helpful voice assistant. Always answer in at least four full sentences, "
                  "with no lists and no markdown.")
