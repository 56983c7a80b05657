from mergekit_safety.cli import main

main()
