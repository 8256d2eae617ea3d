// The test root of KFlow.Core: every test file's `tests`, run by Expecto from the command line.
module KFlow.Core.Tests.Main

open Expecto

[<Tests>]
let all =
    testList "Core" [
        OffsetTests.tests
        LedgerTests.tests
        AppliedOffsetsTests.tests
        StageTests.tests
        AggregateTests.tests
        ChunksTests.tests
        PipeTests.tests
        AsyncQueueTests.tests
        StoreVersionTests.tests
        CollectedTests.tests
        PipeRunTests.tests
        SinkPipeliningTests.tests
        TestDriverTests.tests
        ConceptsTests.tests
        PipePropertyTests.tests
        TestDriverMachineTests.tests
    ]

[<EntryPoint>]
let main argv = runTestsWithCLIArgs [] argv all
