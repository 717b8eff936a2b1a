from batch.cli import main

if __name__ == "__main__":  # vLLM spawns its engine process: the entry point must be guarded
    main()
