package dev.reckon

import dev.reckon.ffi.CancelToken
import dev.reckon.ffi.Engine
import dev.reckon.ffi.EngineOptions
import dev.reckon.ffi.ModelInfo
import dev.reckon.ffi.ReckonException
import dev.reckon.ffi.SolveEvent
import dev.reckon.ffi.SolveListener
import dev.reckon.ffi.SolveOptions
import dev.reckon.ffi.SolveResult
import dev.reckon.ffi.loadEngine
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.awaitCancellation
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.launch
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.channels.trySendBlocking
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.flowOn
import kotlinx.coroutines.withContext

/** What a solve streams to the UI: its events, then its result. */
sealed interface SolveUpdate {
    /** Thinking or answer text, an injection, or the end. */
    data class Event(val event: SolveEvent) : SolveUpdate

    /** The finished solve: answer, extracted answer, token counts, timings. */
    data class Finished(val result: SolveResult) : SolveUpdate
}

/**
 * A loaded model, shaped for an Android ViewModel.
 *
 * ```
 * val reckon = Reckon.load(path)                    // off the main thread
 * viewModelScope.launch {
 *     reckon.solveFlow(question, SolveOptions(maxThinkingMs = 8_000uL)).collect { update -> ... }
 * }                                                 // leaving the screen cancels the solve
 * ```
 */
class Reckon private constructor(private val engine: Engine) : AutoCloseable {
    companion object {
        /** Load a GGUF model (blocking: call from a background dispatcher). */
        @Throws(ReckonException::class)
        fun load(modelPath: String, options: EngineOptions = EngineOptions()): Reckon =
            Reckon(Engine(modelPath, options))

        /** Load without blocking: suspends while the model loads on a thread of its own. */
        @Throws(ReckonException::class)
        suspend fun loadAsync(modelPath: String, options: EngineOptions = EngineOptions()): Reckon =
            Reckon(loadEngine(modelPath, options))
    }

    /** Architecture, size, quantization, think format. */
    val info: ModelInfo get() = engine.info()

    /**
     * Solve on [Dispatchers.IO], emitting each event and then the result.
     * Cancelling the collector (or its scope) cancels the solve within one
     * decode step. Errors arrive as [ReckonException].
     */
    fun solveFlow(question: String, options: SolveOptions = SolveOptions()): Flow<SolveUpdate> =
        callbackFlow {
            val token = CancelToken()
            // The collector going away cancels this producer and so the
            // watcher, which cancels the blocking solve within one step.
            val watcher = cancelOnCancellation(token)
            val listener = object : SolveListener {
                override fun onEvent(event: SolveEvent): Boolean =
                    trySendBlocking(SolveUpdate.Event(event)).isSuccess
            }
            try {
                val result = engine.solve(question, options, listener, token)
                send(SolveUpdate.Finished(result))
                close()
            } catch (e: ReckonException) {
                close(e)
            } finally {
                watcher.cancel()
            }
            awaitClose()
        }.buffer(Channel.UNLIMITED).flowOn(Dispatchers.IO)

    /**
     * Solve on [Dispatchers.IO] and return the result; [onEvent] sees each
     * event on the solving thread. Coroutine cancellation cancels the solve.
     */
    @Throws(ReckonException::class)
    suspend fun solve(
        question: String,
        options: SolveOptions = SolveOptions(),
        onEvent: (SolveEvent) -> Unit = {},
    ): SolveResult = coroutineScope {
        val token = CancelToken()
        val watcher = cancelOnCancellation(token)
        try {
            withContext(Dispatchers.IO) {
                engine.solve(question, options, object : SolveListener {
                    override fun onEvent(event: SolveEvent): Boolean {
                        onEvent(event)
                        return !token.isCancelled()
                    }
                }, token)
            }
        } finally {
            watcher.cancel()
        }
    }

    /** A child coroutine that cancels [token] when its scope is cancelled. */
    private fun CoroutineScope.cancelOnCancellation(token: CancelToken): Job =
        launch(start = CoroutineStart.UNDISPATCHED) {
            try {
                awaitCancellation()
            } finally {
                token.cancel()
            }
        }

    /** Blocking solve for callers that manage their own threads. */
    @Throws(ReckonException::class)
    fun solveBlocking(
        question: String,
        options: SolveOptions = SolveOptions(),
        cancel: CancelToken? = null,
        listener: SolveListener,
    ): SolveResult = engine.solve(question, options, listener, cancel)

    /** Free the model. */
    override fun close() = engine.close()
}
