"""Does the margin help? Label agreement reports, the reward-model check, direction transfer."""
