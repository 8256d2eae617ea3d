// The test root of KFlow.Testing: every test file's `tests`, run by Expecto from the command line.
// Suites that share the embedded cluster or the throwaway server are sequenced.
module KFlow.Testing.Tests.Main

open Expecto

[<Tests>]
let all =
    testList "Testing" [
        EmbeddedKafkaTests.tests
        PostgresTests.tests
        PipePropertiesTests.tests
        TestingPipesDocTests.tests
        DocSnippetsTests.tests
    ]

[<EntryPoint>]
let main argv = runTestsWithCLIArgs [] argv all
