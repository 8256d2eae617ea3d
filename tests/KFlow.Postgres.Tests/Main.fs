// The test root of KFlow.Postgres: every test file's `tests`, run by Expecto from the command line.
// The suites that use the project's throwaway server are sequenced.
module KFlow.Postgres.Tests.Main

open Expecto

[<Tests>]
let all =
    testList "Postgres" [
        PgIdentifierTests.tests
        PgValueTests.tests
        PgSchemaTests.tests
        PgRowTests.tests
        PgRetryTests.tests
        PgAppliedOffsetsTests.tests
        WritePipelineTests.tests
        GroupCommitTests.tests
        UpsertConfigTests.tests
        UpsertStatementsTests.tests
        UpsertAttemptsTests.tests
        UpsertBatchesTests.tests
        UpsertWriterTests.tests
        ExactlyOnceCrashTests.tests
        ExactlyOnceZombieTests.tests
        PostgresSinkDocTests.tests
        SeedWorkflowTests.tests
    ]

[<EntryPoint>]
let main argv = runTestsWithCLIArgs [] argv all
